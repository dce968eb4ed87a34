"""The embedded Triton server on a repository generated here: ONNX models through the Python-based
``onnxruntime`` backend (as ``platform: "onnxruntime_onnx"`` and as ``backend: "onnxruntime"``), a Python
model, and an ensemble chaining them, over HTTP and gRPC; plus load failures, busy ports and clean
shutdown."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from fitguard.serve import EmbeddedServer, InvalidRepositoryError, ModelLoadError, PortInUseError

pytestmark = pytest.mark.server

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

ONNX_CONFIG = """{kind}
max_batch_size: 16
input [{{ name: "X" data_type: TYPE_FP32 dims: [-1] }}]
output [
  {{ name: "Y" data_type: TYPE_FP32 dims: [-1] }},
  {{ name: "POSITIVE" data_type: TYPE_BOOL dims: [-1] }}
]
instance_group [{{ kind: KIND_CPU count: 1 }}]
dynamic_batching {{ max_queue_delay_microseconds: 50000 }}
parameters {{ key: "intra_op_thread_count" value: {{ string_value: "1" }} }}
parameters {{ key: "inter_op_thread_count" value: {{ string_value: "1" }} }}
optimization {{ graph {{ level: 1 }} }}
"""

SCALE_CONFIG = """backend: "python"
max_batch_size: 16
input [{ name: "Y" data_type: TYPE_FP32 dims: [-1] }]
output [{ name: "Z" data_type: TYPE_FP32 dims: [-1] }]
instance_group [{ kind: KIND_CPU count: 1 }]
"""

SCALE_MODEL = """import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            y = pb_utils.get_input_tensor_by_name(request, "Y").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("Z", (y * 10).astype(np.float32))]))
        return out
"""

ENSEMBLE_CONFIG = """platform: "ensemble"
max_batch_size: 16
input [{ name: "X" data_type: TYPE_FP32 dims: [-1] }]
output [
  { name: "Z" data_type: TYPE_FP32 dims: [-1] },
  { name: "POSITIVE" data_type: TYPE_BOOL dims: [-1] }
]
ensemble_scheduling { step [
  { model_name: "affine_platform" model_version: -1
    input_map { key: "X" value: "X" }
    output_map [{ key: "Y" value: "y" }, { key: "POSITIVE" value: "POSITIVE" }] },
  { model_name: "scale" model_version: -1
    input_map { key: "Y" value: "y" }
    output_map { key: "Z" value: "Z" } }
] }
"""


def affine_onnx() -> onnx.ModelProto:
    """Y = 2X + 1 and POSITIVE = Y > 0 with a dynamic batch and feature dimension."""
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["X", "two"], ["twice"]),
            helper.make_node("Add", ["twice", "one"], ["Y"]),
            helper.make_node("Greater", ["Y", "zero"], ["POSITIVE"]),
        ],
        "affine",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", "D"])],
        [
            helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", "D"]),
            helper.make_tensor_value_info("POSITIVE", TensorProto.BOOL, ["N", "D"]),
        ],
        initializer=[
            helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
            helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
            helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_model(repo: Path, name: str, config: str, files: dict[str, bytes | str] | None = None) -> None:
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    (repo / name / "config.pbtxt").write_text(config)
    for rel, content in (files or {}).items():
        path = repo / name / "1" / rel
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)


def write_repository(repo: Path) -> Path:
    model = affine_onnx().SerializeToString()
    write_model(
        repo,
        "affine_platform",
        ONNX_CONFIG.format(kind='platform: "onnxruntime_onnx"'),
        {"model.onnx": model},
    )
    write_model(
        repo, "affine_backend", ONNX_CONFIG.format(kind='backend: "onnxruntime"'), {"model.onnx": model}
    )
    write_model(repo, "scale", SCALE_CONFIG, {"model.py": SCALE_MODEL})
    write_model(repo, "chain", ENSEMBLE_CONFIG)
    return repo


def expected(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = x * 2 + 1
    return y, y > 0


def echo_onnx() -> onnx.ModelProto:
    """Strings in, the same strings out: exercises TYPE_STRING through ONNX Runtime."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["TEXT"], ["ECHO"])],
        "echo",
        [helper.make_tensor_value_info("TEXT", TensorProto.STRING, ["N", 1])],
        [helper.make_tensor_value_info("ECHO", TensorProto.STRING, ["N", 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def pick_onnx() -> onnx.ModelProto:
    """Y[n, k] = X[n, IDX[n, k]]: an index out of range fails in ONNX Runtime, not in Triton's checks."""
    graph = helper.make_graph(
        [helper.make_node("GatherElements", ["X", "IDX"], ["Y"], axis=1)],
        "pick",
        [
            helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", "D"]),
            helper.make_tensor_value_info("IDX", TensorProto.INT64, ["N", "K"]),
        ],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", "K"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def write_extra_models(repo: Path) -> None:
    # Inputs and outputs left out: filled in from the ONNX file, as the native backend's auto-complete does.
    write_model(
        repo,
        "autocomplete",
        'platform: "onnxruntime_onnx"\nmax_batch_size: 4\ninstance_group [{ kind: KIND_CPU count: 1 }]\n',
        {"model.onnx": affine_onnx().SerializeToString()},
    )
    echo = """backend: "onnxruntime"
max_batch_size: 4
input [{ name: "TEXT" data_type: TYPE_STRING dims: [1] }]
output [{ name: "ECHO" data_type: TYPE_STRING dims: [1] }]
instance_group [{ kind: KIND_CPU count: 1 }]
"""
    write_model(repo, "echo", echo, {"model.onnx": echo_onnx().SerializeToString()})
    pick = """backend: "onnxruntime"
max_batch_size: 16
input [{ name: "X" data_type: TYPE_FP32 dims: [3] }, { name: "IDX" data_type: TYPE_INT64 dims: [1] }]
output [{ name: "Y" data_type: TYPE_FP32 dims: [1] }]
instance_group [{ kind: KIND_CPU count: 1 }]
dynamic_batching { max_queue_delay_microseconds: 100000 }
"""
    write_model(repo, "pick", pick, {"model.onnx": pick_onnx().SerializeToString()})


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    repo = write_repository(tmp_path_factory.mktemp("repo"))
    write_extra_models(repo)
    log = tmp_path_factory.mktemp("log") / "triton.log"
    with EmbeddedServer(repo, http_port=0, grpc_port=0, metrics_port=0, log_file=log) as s:
        yield s


def _http_infer(url: str, model: str, x: np.ndarray, outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
    import tritonclient.http as httpclient

    inp = httpclient.InferInput("X", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    # Closed after use: Triton's shutdown waits for idle keep-alive connections.
    with httpclient.InferenceServerClient(url) as client:
        result = client.infer(model, [inp], outputs=[httpclient.InferRequestedOutput(n) for n in outputs])
    return {n: result.as_numpy(n) for n in outputs}


@pytest.mark.parametrize("model", ["affine_platform", "affine_backend"])
def test_onnx_model_over_http(server: EmbeddedServer, model: str) -> None:
    x = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    out = _http_infer(server.http_url, model, x, ("Y", "POSITIVE"))
    y, positive = expected(x)
    np.testing.assert_allclose(out["Y"], y, rtol=1e-6)
    assert out["POSITIVE"].dtype == np.bool_
    np.testing.assert_array_equal(out["POSITIVE"], positive)


def test_ensemble_over_grpc(server: EmbeddedServer) -> None:
    import tritonclient.grpc as grpcclient

    x = np.array([[-3.0, -0.5, 0.0, 4.0]], dtype=np.float32)
    inp = grpcclient.InferInput("X", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        assert client.is_server_ready()
        result = client.infer("chain", [inp])
    y, positive = expected(x)
    np.testing.assert_allclose(result.as_numpy("Z"), y * 10, rtol=1e-6)
    np.testing.assert_array_equal(result.as_numpy("POSITIVE"), positive)


def test_ensemble_over_http(server: EmbeddedServer) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = _http_infer(server.http_url, "chain", x, ("Z",))
    np.testing.assert_allclose(out["Z"], (x * 2 + 1) * 10)


def test_concurrent_requests_are_batched_and_split_back(server: EmbeddedServer) -> None:
    """Requests of different batch sizes and feature widths arrive together: each gets its own answer."""
    rng = np.random.default_rng(1)
    inputs = [rng.normal(size=(1 + i % 3, 4 if i % 4 else 7)).astype(np.float32) for i in range(16)]
    before = _stats(server, "affine_backend")
    with ThreadPoolExecutor(len(inputs)) as pool:
        results = list(pool.map(lambda x: _http_infer(server.http_url, "affine_backend", x, ("Y",)), inputs))
    for x, out in zip(inputs, results, strict=True):
        np.testing.assert_allclose(out["Y"], x * 2 + 1, rtol=1e-6)
    after = _stats(server, "affine_backend")
    requests = after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"]
    executions = after["execution_count"] - before["execution_count"]
    assert requests == len(inputs)
    # With a 50 ms queue delay, 16 simultaneous requests must have shared at least one execute() call.
    assert executions < requests, (executions, requests)


def _stats(server: EmbeddedServer, model: str) -> dict:
    import tritonclient.http as httpclient

    with httpclient.InferenceServerClient(server.http_url) as client:
        return client.get_inference_statistics(model)["model_stats"][0]


def test_bad_request_is_an_error_response(server: EmbeddedServer) -> None:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    inp = httpclient.InferInput("X", [2, 3], "INT32")
    inp.set_data_from_numpy(np.zeros((2, 3), dtype=np.int32))
    with (
        httpclient.InferenceServerClient(server.http_url) as client,
        pytest.raises(InferenceServerException, match="FP32"),
    ):
        client.infer("affine_backend", [inp])
    # The model still serves after the bad request.
    x = np.ones((1, 2), dtype=np.float32)
    np.testing.assert_allclose(_http_infer(server.http_url, "affine_backend", x, ("Y",))["Y"], x * 3)


def test_a_failing_request_does_not_fail_its_batch_mates(server: EmbeddedServer) -> None:
    """One request of a dynamic batch makes ONNX Runtime fail: only that request gets the error."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    def pick(index: int) -> np.ndarray | str:
        x = np.array([[10.0, 20.0, 30.0]], dtype=np.float32)
        inputs = [httpclient.InferInput("X", [1, 3], "FP32"), httpclient.InferInput("IDX", [1, 1], "INT64")]
        inputs[0].set_data_from_numpy(x)
        inputs[1].set_data_from_numpy(np.array([[index]], dtype=np.int64))
        with httpclient.InferenceServerClient(server.http_url) as client:
            try:
                return client.infer("pick", inputs).as_numpy("Y")
            except InferenceServerException as e:
                return str(e)

    indices = [0, 1, 2, 7, 1, 0, 2, 1]
    before = _stats(server, "pick")
    with ThreadPoolExecutor(len(indices)) as pool:
        results = list(pool.map(pick, indices))
    for index, result in zip(indices, results, strict=True):
        if index == 7:
            assert isinstance(result, str) and "pick" in result and "GatherElements" in result, result
        else:
            np.testing.assert_array_equal(result, [[10.0 * (index + 1)]])
    after = _stats(server, "pick")
    assert after["execution_count"] - before["execution_count"] < len(indices)  # they were batched


def test_readiness_and_repository_index(server: EmbeddedServer) -> None:
    import tritonclient.http as httpclient

    with httpclient.InferenceServerClient(server.http_url) as client:
        assert client.is_server_live() and client.is_server_ready()
        config = client.get_model_config("affine_platform")
    with urllib.request.urlopen(f"http://{server.http_url}/v2/health/ready") as r:
        assert r.status == 200
    index = {m["name"]: m["state"] for m in server.repository_index()}
    models = ["affine_backend", "affine_platform", "autocomplete", "chain", "echo", "pick", "scale"]
    assert index == dict.fromkeys(models, "READY")
    assert config["platform"] == "onnxruntime_onnx" and config["backend"] == "onnxruntime"


def test_config_auto_completed_from_the_onnx_model(server: EmbeddedServer) -> None:
    import tritonclient.http as httpclient

    with httpclient.InferenceServerClient(server.http_url) as client:
        config = client.get_model_config("autocomplete")
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [("X", "TYPE_FP32", [-1])]
    assert {t["name"]: t["data_type"] for t in config["output"]} == {
        "Y": "TYPE_FP32",
        "POSITIVE": "TYPE_BOOL",
    }
    x = np.array([[0.5, -1.0, 2.0]], dtype=np.float32)
    np.testing.assert_allclose(_http_infer(server.http_url, "autocomplete", x, ("Y",))["Y"], x * 2 + 1)


def test_string_tensors(server: EmbeddedServer) -> None:
    import tritonclient.grpc as grpcclient

    text = np.array([["ünïcode"], ["plain"]], dtype=object)
    inp = grpcclient.InferInput("TEXT", [2, 1], "BYTES")
    inp.set_data_from_numpy(text)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        echo = client.infer("echo", [inp]).as_numpy("ECHO")
    assert [[v.decode()] for v in echo[:, 0]] == text.tolist()


def test_metrics_endpoint(server: EmbeddedServer) -> None:
    _http_infer(server.http_url, "affine_platform", np.zeros((1, 2), dtype=np.float32), ("Y",))
    with urllib.request.urlopen(f"http://{server.metrics_url}/metrics") as r:
        text = r.read().decode()
    counts = re.findall(
        r'^nv_inference_count\{model="affine_platform",version="1"\} (\d+)', text, re.MULTILINE
    )
    assert counts and int(counts[0]) >= 1


def test_server_log_is_captured(server: EmbeddedServer) -> None:
    assert "Started HTTPService" in server.log()
    assert server.log_file is not None and "Started HTTPService" in server.log_file.read_text()
    # The backend applied the config's tunables to the ONNX Runtime session.
    loaded = [line for line in server.log().splitlines() if "onnxruntime backend: affine_backend" in line]
    assert loaded and all(
        "on CPUExecutionProvider (intra_op_threads=1, inter_op_threads=1, "
        "graph_optimization=ORT_ENABLE_EXTENDED" in line
        for line in loaded
    ), loaded
    assert server.startup_seconds is not None and server.startup_seconds > 0


def test_busy_port_is_a_clear_error(tmp_path: Path) -> None:
    repo = write_repository(tmp_path / "repo")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = EmbeddedServer(repo, http_port=0, grpc_port=port, metrics_port=0)
        with pytest.raises(PortInUseError, match=f"grpc port {port}.*already in use"):
            server.start()
        assert not server.is_running()


def test_missing_repository_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidRepositoryError, match="does not exist"):
        EmbeddedServer(tmp_path / "nope", http_port=0, grpc_port=0, metrics_port=0).start()


@pytest.mark.slow
def test_models_that_fail_to_load_are_named_with_the_reason(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    model = affine_onnx().SerializeToString()
    write_model(repo, "good", ONNX_CONFIG.format(kind='platform: "onnxruntime_onnx"'), {"model.onnx": model})
    write_model(
        repo, "corrupt", ONNX_CONFIG.format(kind='platform: "onnxruntime_onnx"'), {"model.onnx": b"junk"}
    )
    wrong = ONNX_CONFIG.format(kind='backend: "onnxruntime"').replace(
        'name: "X" data_type: TYPE_FP32', 'name: "X" data_type: TYPE_INT32'
    )
    write_model(repo, "wrong_type", wrong, {"model.onnx": model})
    write_model(repo, "bad_config", "this is not a model config\n")
    server = EmbeddedServer(repo, http_port=0, grpc_port=0, metrics_port=0)
    with pytest.raises(ModelLoadError) as info:
        server.start()
    failures = info.value.failures
    assert set(failures) == {"corrupt", "wrong_type", "bad_config"}
    assert "Protobuf parsing failed" in failures["corrupt"]
    assert "TYPE_INT32" in failures["wrong_type"] and "tensor(float)" in failures["wrong_type"]
    assert "config.pbtxt" in failures["bad_config"] and "no field named" in failures["bad_config"]
    assert "corrupt" in str(info.value)
    assert not server.is_running()

    # Asked to, the server keeps serving the models that did load.
    with EmbeddedServer(repo, http_port=0, grpc_port=0, metrics_port=0, fail_on_model_error=False) as partial:
        states = {m["name"]: m.get("state") for m in partial.repository_index()}
        assert states["good"] == "READY" and states["corrupt"] == "UNAVAILABLE"
        x = np.ones((1, 2), dtype=np.float32)
        np.testing.assert_allclose(_http_infer(partial.http_url, "good", x, ("Y",))["Y"], x * 3)


@pytest.mark.slow
def test_empty_repository_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidRepositoryError, match="no models found"):
        EmbeddedServer(tmp_path / "empty", http_port=0, grpc_port=0, metrics_port=0).start()


def _group_alive(pgid: int) -> list[int]:
    """Live (non-zombie) processes in a process group."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(entry.name))
    return alive


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _shm_regions(pgid: int) -> list[Path]:
    regions = []
    for pid in _group_alive(pgid):
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        regions += [Path("/dev/shm", a.decode()) for a in args if b"_shm_region_" in a]
    return regions


@pytest.mark.slow
def test_clean_shutdown_leaves_no_process_and_frees_ports(tmp_path: Path) -> None:
    """Even with a client still connected (Triton then exits without unloading), nothing is left behind."""
    import tritonclient.http as httpclient

    repo = write_repository(tmp_path / "repo")
    with EmbeddedServer(repo, http_port=0, grpc_port=0, metrics_port=0, exit_timeout=2) as server:
        pid = server.pid
        assert pid is not None
        ports = [server.http_port, server.grpc_port, server.metrics_port]
        assert len(_group_alive(pid)) >= 4  # the server and one Python stub per model instance
        regions = _shm_regions(pid)
        assert regions and all(r.exists() for r in regions)
        client = httpclient.InferenceServerClient(server.http_url)
        assert client.is_server_ready()  # keeps a keep-alive connection open across stop()
        started = time.monotonic()
    try:
        assert time.monotonic() - started < 15
        assert not server.is_running()
        assert _group_alive(pid) == []
        assert all(_port_free(p) for p in ports)
        assert [r for r in regions if r.exists()] == []
    finally:
        client.close()


def _serve(repo: Path, *extra: str, stderr: object = subprocess.PIPE) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "fitguard.cli", "serve", "--model-repository", str(repo)]
    cmd += ["--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True)


def _children(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(entry.name))
        except OSError:
            continue
    return children


def _wait_ready(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("Ctrl-C"):
            return "".join(lines)
    raise AssertionError(f"serve exited: {''.join(lines)}{proc.stderr.read() if proc.stderr else ''}")


def _wait_gone(pgid: int, timeout: float = 30) -> list[int]:
    end = time.monotonic() + timeout
    while _group_alive(pgid) and time.monotonic() < end:
        time.sleep(0.1)
    return _group_alive(pgid)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_cli_serves_and_stops_on_signal(tmp_path: Path, sig: signal.Signals) -> None:
    repo = write_repository(tmp_path / "repo")
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:
        proc = _serve(repo, "--forward-log", stderr=err)
    try:
        banner = _wait_ready(proc)
        http = re.search(r"HTTP\s+http://(\S+)", banner).group(1)
        with urllib.request.urlopen(f"http://{http}/v2/health/ready") as r:
            assert r.status == 200
        x = np.array([[1.0, -2.0]], dtype=np.float32)
        np.testing.assert_allclose(_http_infer(http, "chain", x, ("Z",))["Z"], (x * 2 + 1) * 10)
        (server_pid,) = _children(proc.pid)
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == 0
        assert _wait_gone(server_pid, timeout=5) == []
        assert "Started HTTPService" in log.read_text()  # --forward-log copied the server's log
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_cli_exits_nonzero_naming_the_failed_model(tmp_path: Path) -> None:
    repo = write_repository(tmp_path / "repo")
    (repo / "affine_backend" / "1" / "model.onnx").write_bytes(b"junk")
    proc = _serve(repo)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "affine_backend" in err and "Protobuf parsing failed" in err
    # The ensemble does not depend on the broken model and is not reported.
    assert "chain:" not in err


@pytest.mark.slow
def test_server_dies_with_a_killed_parent(tmp_path: Path) -> None:
    """SIGKILL gives the parent no chance to clean up: the server must still go (PR_SET_PDEATHSIG)."""
    repo = write_repository(tmp_path / "repo")
    proc = _serve(repo)
    try:
        _wait_ready(proc)
        (server_pid,) = _children(proc.pid)
        assert _group_alive(server_pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert _wait_gone(server_pid, timeout=45) == []
    finally:
        proc.kill()
        proc.wait()
