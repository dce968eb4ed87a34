"""The deployment files, validated without a Docker engine or a cluster.

Linted with the real tools (hadolint, shellcheck), schema-checked against the Compose specification and the
Kubernetes OpenAPI schemas (check-jsonschema, kubernetes-validate: both ship their schemas, so this runs
offline), and cross-checked: every COPY source exists, compose and the manifests point at what the
Dockerfile builds, selectors match labels, the HPA's metric is the one the adapter publishes. The
container's entry command itself runs against the embedded server in test_entrypoint_* below.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
K8S = DOCKER / "k8s"
BIN = Path(sys.executable).parent
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"  # Triton 2.51.0, as the embedded server


def _tool(name: str) -> str:
    path = shutil.which(name, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    assert path, f"{name} is missing: pip install 'fitguard[dev]'"
    return path


def _run(*cmd: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)


# ------------------------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        keyword, _, args = pending.partition(" ")
        out.append((keyword.upper(), args.strip()))
        pending = ""
    return out


def stages(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Instructions per build stage, keyed by the stage name (``AS name``)."""
    result: dict[str, list[tuple[str, str]]] = {}
    current = None
    for keyword, args in dockerfile_instructions(path):
        if keyword == "FROM":
            m = re.search(r"\bAS\s+(\S+)", args, re.IGNORECASE)
            current = m.group(1) if m else f"stage{len(result)}"
            result[current] = []
        if current is not None:
            result[current].append((keyword, args))
    return result


@pytest.fixture(scope="module")
def dockerfile() -> Path:
    return DOCKER / "Dockerfile"


def test_hadolint_clean(dockerfile):
    proc = _run(_tool("hadolint"), "--failure-threshold", "info", str(dockerfile))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_entrypoint_shellcheck_clean():
    proc = _run(_tool("shellcheck"), "--severity=style", str(DOCKER / "entrypoint.sh"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert os.access(DOCKER / "entrypoint.sh", os.X_OK)


def test_dockerfile_targets_and_base(dockerfile):
    found = stages(dockerfile)
    assert {"export", "server", "server-baked"} <= set(found)
    args = dict(a.split("=", 1) for k, a in dockerfile_instructions(dockerfile) if k == "ARG" and "=" in a)
    assert args["TRITON_IMAGE"] == TRITON_IMAGE
    server_from = found["server"][0][1]
    assert server_from.startswith("${TRITON_IMAGE}")
    # Pinned tags only: no "latest", no untagged images.
    for keyword, value in dockerfile_instructions(dockerfile):
        if keyword == "FROM":
            image = value.split()[0]
            if image.startswith("$"):
                image = args[image.strip("${}")]
            assert image == "scratch" or image in found or re.search(r":[\w.-]+$", image), image
            assert not image.endswith(":latest")


def test_server_stage_is_hardened(dockerfile):
    server = stages(dockerfile)["server"]
    kinds = [k for k, _ in server]
    user = [a for k, a in server if k == "USER"]
    assert user and not user[-1].startswith(("root", "0")), "the server must not run as root"
    assert kinds.index("USER") > max(i for i, k in enumerate(kinds) if k == "RUN"), "USER after the last RUN"
    health = " ".join(a for k, a in server if k == "HEALTHCHECK")
    assert "fitguard health" in health  # the deep check, not Triton's ready
    exposed = " ".join(a for k, a in server if k == "EXPOSE").split()
    assert exposed == ["8000", "8001", "8002", "8003"]
    entry = " ".join(a for k, a in server if k == "ENTRYPOINT")
    assert "fitguard-entrypoint" in entry
    run = " ".join(a for k, a in server if k == "RUN")
    # Only what preprocessing needs: no torch, no onnxruntime wheel in the serving image.
    assert "numpy" in run and "Pillow" in run and "--no-deps" in run
    assert "torch" not in run and "onnxruntime" not in run


def test_copy_sources_exist_and_are_not_ignored(dockerfile):
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = [p[1:].rstrip("/") for p in ignore if p.startswith("!")]
    for keyword, args in dockerfile_instructions(dockerfile):
        if keyword != "COPY" or "--from=" in args:
            continue
        parts = [p for p in args.split() if not p.startswith("--")]
        for src in parts[:-1]:
            assert (ROOT / src).exists(), f"COPY source {src} is missing from the build context"
            clean = src.rstrip("/")
            assert any(clean == a or clean.startswith(a + "/") for a in allowed), f"{src} is dockerignored"


def test_export_stage_uses_resnet152_and_the_accelerator_flag(dockerfile):
    export = stages(dockerfile)["export"]
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for k, a in export if k == "ARG" and "=" in a}
    assert args["BACKBONE"] == "resnet152"
    assert args["ACCELERATOR"] == "none"
    run = " ".join(a for k, a in export if k == "RUN")
    assert '--accelerator "${ACCELERATOR}"' in run and '--instances "${INSTANCES}"' in run
    assert "verify_repository('/models')" in run
    baked = stages(dockerfile)["server-baked"]
    assert ("COPY", "--from=export /models /models") in baked


@pytest.mark.slow
def test_export_stage_commands_run(dockerfile, tiny_repository, tmp_path):
    """The export stage's RUN lines, run here as BuildKit would run them (tiny backbone, GPU variant config).

    Paths inside the image (/artifacts, /models, /build) are mapped into tmp_path; the pip installs are
    skipped (this environment has the packages). Catches wrong flags or file names before anyone builds.
    """
    heads = tiny_repository.parent
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    shutil.copy(heads / "head.pt", artifacts / "iqa_head.pt")
    shutil.copy(heads / "detector.joblib", artifacts / "detector.joblib")
    export = stages(dockerfile)["export"]
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for k, a in export if k == "ARG" and "=" in a}
    args.update(BACKBONE="tiny", WEIGHTS="random", ACCELERATOR="tensorrt-fp16", INSTANCES="2")
    env = dict(os.environ, **args, TORCH_HOME=str(tmp_path / "torch"))
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    runs = [a for k, a in export if k == "RUN" and "pip install" not in a]
    assert len(runs) == 2
    for command in runs:
        for inside in ("/artifacts", "/models", "/build"):
            command = re.sub(rf"(?<![\w.}}]){inside}\b", str(tmp_path) + inside, command)
        proc = subprocess.run(
            ["bash", "-o", "pipefail", "-c", command], env=env, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}"
    models = tmp_path / "models"
    assert (models / "manifest.json").is_file()
    classifier = (models / "classifier" / "config.pbtxt").read_text()
    assert "tensorrt" in classifier and "FP16" in classifier and "KIND_GPU" in classifier
    assert "count: 2" in classifier
    assert "KIND_CPU" in (models / "detector" / "config.pbtxt").read_text()


# ----------------------------------------------------------------------------------------------- compose


def _compose(name: str) -> dict:
    return yaml.safe_load((DOCKER / name).read_text())


def test_compose_files_match_the_compose_spec():
    proc = _run(
        _tool("check-jsonschema"),
        "--builtin-schema",
        "vendor.compose-spec",
        str(DOCKER / "compose.yaml"),
        str(DOCKER / "compose.tls.yaml"),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_server_service(dockerfile):
    server = _compose("compose.yaml")["services"]["server"]
    devices = server["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    container_ports = sorted(int(str(p).rsplit(":", 1)[1]) for p in server["ports"])
    assert container_ports == [8000, 8001, 8002]
    models = next(v for v in server["volumes"] if v["target"] == "/models")
    assert models["read_only"] is True
    assert server["shm_size"]
    build = server["build"]
    assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == dockerfile.resolve()
    assert build["target"] in stages(dockerfile)
    export = _compose("compose.yaml")["services"]["export"]
    assert export["build"]["target"] == "export" and export["profiles"] == ["export"]


def test_compose_tls_overlay_feeds_the_entrypoint():
    tls = _compose("compose.tls.yaml")
    env = tls["services"]["server"]["environment"]
    entry = (DOCKER / "entrypoint.sh").read_text()
    for var in env:
        assert var in entry, f"{var} is not read by the entrypoint"
    assert set(tls["secrets"]) == set(tls["services"]["server"]["secrets"])


# ------------------------------------------------------------------------------------------ Kubernetes


def _k8s(name: str) -> dict:
    return yaml.safe_load((K8S / name).read_text())


def test_manifests_match_the_kubernetes_schemas():
    resources = _k8s("kustomization.yaml")["resources"]
    assert set(resources) == {"deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml"}
    proc = _run(_tool("kubernetes-validate"), "--strict", *resources, cwd=K8S)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("passed") == len(resources), proc.stdout


def test_deployment_probes_gpu_and_security():
    dep = _k8s("deployment.yaml")
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002, "health": 8003}
    # Readiness and liveness run the deep check (a canary through every step); startup waits for Triton.
    for probe in ("readinessProbe", "livenessProbe"):
        command = container[probe]["exec"]["command"]
        assert command[:2] == ["fitguard", "health"], command
        assert command[command.index("--url") + 1] == f"127.0.0.1:{ports['http']}"
        canary_timeout = float(command[command.index("--timeout") + 1])
        assert container[probe]["timeoutSeconds"] > canary_timeout
    assert container["readinessProbe"]["periodSeconds"] * container["readinessProbe"]["failureThreshold"] <= 5
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["startupProbe"]["httpGet"]["port"] in ports
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert any(m["mountPath"] == "/dev/shm" for m in container["volumeMounts"])
    # Grace period must outlast preStop + the entrypoint's drain (EXIT_TIMEOUT_SECS).
    env = {e["name"]: e.get("value") for e in container["env"]}
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + int(env["EXIT_TIMEOUT_SECS"])
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_selectors_and_references_line_up():
    dep, svc, hpa, pdb = (_k8s(f) for f in ("deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml"))
    labels = dep["spec"]["template"]["metadata"]["labels"]
    for selector in (
        dep["spec"]["selector"]["matchLabels"],
        svc["spec"]["selector"],
        pdb["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= labels.items()
    target_ports = {p["name"] for p in dep["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= target_ports
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", dep["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= 2 > pdb["spec"]["minAvailable"]


def test_hpa_metric_is_published_by_the_adapter_rule():
    hpa = _k8s("hpa.yaml")
    (metric,) = hpa["spec"]["metrics"]
    name = metric["pods"]["metric"]["name"]
    rules = _k8s("prometheus-adapter-values.yaml")["rules"]["custom"]
    rule = next(r for r in rules if r["name"]["as"] == name)
    assert "nv_inference_queue_duration_us" in rule["seriesQuery"]
    assert "rate(nv_inference_queue_duration_us" in rule["metricsQuery"]


# ------------------------------------------------------------------------ the entry command, for real


def _get(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> int:
    req = urllib.request.Request(
        url, headers=headers or {}, method=method, data=b"{}" if method == "POST" else None
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return -1


def entrypoint_env(repository: Path, **extra: str) -> tuple[dict[str, str], dict[str, int]]:
    """Environment that points the container's entry command at the embedded tritonserver binary."""
    from fitguard.serve.embedded import EmbeddedServer, backend_directory, find_tritonserver

    binary, _ = find_tritonserver()
    env = EmbeddedServer(repository).environment()
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
    env.update(
        MODEL_REPOSITORY=str(repository),
        TRITONSERVER=str(binary),
        TRITON_BACKEND_DIRECTORY=str(backend_directory()),
        PYTHON=sys.executable,
        BIND_ADDRESS="127.0.0.1",
        HTTP_PORT=str(ports["http"]),
        GRPC_PORT=str(ports["grpc"]),
        METRICS_PORT=str(ports["metrics"]),
        HEALTH_PORT=str(free_port()),
        EXIT_TIMEOUT_SECS="10",
        **extra,
    )
    return env, ports


class Entrypoint:
    """docker/entrypoint.sh run as the container would run it, in its own process group."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            ["bash", str(DOCKER / "entrypoint.sh")],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, http_port: int, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"entrypoint exited with {self.proc.returncode}:\n{self.log()}"
            if _get(f"http://127.0.0.1:{http_port}/v2/health/ready") == 200:
                return
            time.sleep(0.2)
        raise AssertionError(f"not ready after {timeout}s:\n{self.log()[-3000:]}")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM as `docker stop` sends it; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # Python stubs left behind, if any
        code = self.proc.wait()
        self._log.close()
        return code


@pytest.fixture
def repository_copy(tiny_repository, tmp_path) -> Path:
    dst = tmp_path / "models"
    shutil.copytree(tiny_repository, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


@pytest.mark.server
@pytest.mark.slow
def test_entrypoint_serves_with_restricted_admin_apis(repository_copy, tmp_path, photos):
    import tritonclient.http as httpclient

    from fitguard.contract import CLASS_ID, ENSEMBLE, FIT, IMAGE
    from fitguard.preprocess import encode_image

    env, ports = entrypoint_env(repository_copy, FITGUARD_ADMIN_KEY="s3cret")
    server = Entrypoint(env, tmp_path / "entrypoint.log")
    try:
        server.wait_ready(ports["http"])
        base = f"http://127.0.0.1:{ports['http']}"
        # Open: health, metadata, config (clients read it on connect), inference.
        assert _get(f"{base}/v2/health/live") == 200
        assert _get(f"{base}/v2/models/{ENSEMBLE}") == 200
        assert _get(f"{base}/v2/models/{ENSEMBLE}/config") == 200
        client = httpclient.InferenceServerClient(f"127.0.0.1:{ports['http']}")
        import numpy as np

        inp = httpclient.InferInput(IMAGE, [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[encode_image(photos["chelsea"])]], dtype=object))
        result = client.infer(ENSEMBLE, [inp])
        assert 0 <= int(result.as_numpy(CLASS_ID)[0][0]) < 1000
        assert result.as_numpy(FIT).dtype == bool
        client.close()
        # Restricted without the header, open with it.
        assert _get(f"{base}/v2/repository/index", method="POST") == 403
        assert _get(f"{base}/v2/logging") == 403
        assert _get(f"{base}/v2/trace/setting") == 403
        assert _get(f"{base}/v2/repository/models/{ENSEMBLE}/unload", method="POST") == 403
        assert _get(f"{base}/v2/repository/index", {"fitguard-admin-key": "wrong"}, "POST") == 403
        assert _get(f"{base}/v2/repository/index", {"fitguard-admin-key": "s3cret"}, "POST") == 200
        # Even with the key, model control is off: the model set is fixed at start.
        unload = _get(
            f"{base}/v2/repository/models/{ENSEMBLE}/unload", {"fitguard-admin-key": "s3cret"}, "POST"
        )
        assert unload != 200
        assert _get(f"http://127.0.0.1:{ports['metrics']}/metrics") == 200
        assert "model files match the manifest" in server.log()
    finally:
        code = server.stop()
    assert code == 0, server.log()[-3000:]  # SIGTERM drains and exits cleanly, like `docker stop`


@pytest.mark.server
@pytest.mark.slow
def test_entrypoint_grpc_tls(repository_copy, tmp_path):
    import tritonclient.grpc as grpcclient

    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    proc = _run(
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=DNS:localhost,IP:127.0.0.1",
        "-keyout",
        str(key),
        "-out",
        str(cert),
    )
    assert proc.returncode == 0, proc.stderr
    env, ports = entrypoint_env(repository_copy, GRPC_TLS_CERT=str(cert), GRPC_TLS_KEY=str(key))
    server = Entrypoint(env, tmp_path / "entrypoint.log")
    try:
        server.wait_ready(ports["http"])
        url = f"localhost:{ports['grpc']}"
        secure = grpcclient.InferenceServerClient(url, ssl=True, root_certificates=str(cert))
        assert secure.is_server_ready()
        assert secure.is_model_ready("fitguard")
        secure.close()
        plain = grpcclient.InferenceServerClient(url)
        with pytest.raises(Exception):  # noqa: B017 - any failure: a plaintext client must not get through
            plain.is_server_ready(client_timeout=5)
        plain.close()
    finally:
        server.stop()


def test_entrypoint_refuses_a_missing_repository(tmp_path):
    env = dict(os.environ, MODEL_REPOSITORY=str(tmp_path / "absent"), TRITONSERVER="false")
    proc = subprocess.run(["bash", str(DOCKER / "entrypoint.sh")], env=env, capture_output=True, text=True)
    assert proc.returncode == 64
    assert "does not exist" in proc.stderr


def test_entrypoint_tls_needs_both_files(tmp_path):
    repo = tmp_path / "models"
    repo.mkdir()
    env = dict(
        os.environ,
        MODEL_REPOSITORY=str(repo),
        TRITONSERVER="false",
        FITGUARD_VERIFY_MANIFEST="0",
        GRPC_TLS_CERT=str(tmp_path / "missing.crt"),
    )
    proc = subprocess.run(["bash", str(DOCKER / "entrypoint.sh")], env=env, capture_output=True, text=True)
    assert proc.returncode == 66
    assert "GRPC_TLS_CERT and GRPC_TLS_KEY" in proc.stderr


def test_entrypoint_builds_the_documented_command(tmp_path):
    """With TRITONSERVER=echo the final exec prints the exact command line the container runs."""
    repo = tmp_path / "models"
    repo.mkdir()
    env = dict(os.environ, MODEL_REPOSITORY=str(repo), TRITONSERVER="echo", FITGUARD_VERIFY_MANIFEST="0")
    proc = subprocess.run(
        ["bash", str(DOCKER / "entrypoint.sh"), "--log-info=true"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    argv = proc.stdout.split()
    assert "--model-control-mode=none" in argv and "--strict-readiness=true" in argv
    restricted = next(a for a in argv if a.startswith("--http-restricted-api="))
    apis, _, header = restricted.split("=", 1)[1].partition(":")
    assert set(apis.split(",")) == {"model-repository", "logging", "trace", "shared-memory"}
    key = header.split("=", 1)[1]
    assert len(key) == 64, "without FITGUARD_ADMIN_KEY the admin APIs are locked with a random key"
    assert argv[-1] == "--log-info=true"
    assert not any(a.startswith("--grpc-use-ssl") for a in argv)


# A stand-in for Triton's triton_python_backend_utils, enough for the preprocess model's calls.
_FAKE_PB_UTILS = """
import types

import numpy as np

class TritonError(Exception):
    INVALID_ARG = 3
    def __init__(self, message, code=None):
        super().__init__(message)
        self.message, self.code = message, code

class Tensor:
    def __init__(self, name, array):
        self.name, self.array = name, np.asarray(array)
    def as_numpy(self):
        return self.array

class InferenceResponse:
    def __init__(self, output_tensors=(), error=None):
        self.output_tensors, self.error = list(output_tensors), error

def get_input_tensor_by_name(request, name):
    return request[name]

class MetricFamily:  # the custom metrics API (the bad-image counter)
    COUNTER, GAUGE, HISTOGRAM = 0, 1, 2
    def __init__(self, name, description, kind):
        self.name = name
    def Metric(self, labels=None, buckets=None):
        return types.SimpleNamespace(increment=lambda n: None, observe=lambda x: None)
"""

_SERVER_IMAGE_CHECK = """
import importlib.abc, importlib.util, json, sys, types

# Only what the server image installs: the standard library, numpy, Pillow and fitguard (--no-deps).
ALLOWED = {"numpy", "PIL", "fitguard", "triton_python_backend_utils"}

class ServerImageOnly(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        top = name.split(".")[0]
        if top in sys.stdlib_module_names or top in ALLOWED or top.startswith("_"):
            return None
        raise ImportError(f"{name} is not installed in the server image")

sys.meta_path.insert(0, ServerImageOnly())
pb = types.ModuleType("triton_python_backend_utils")
exec(sys.argv[1], pb.__dict__)
sys.modules["triton_python_backend_utils"] = pb
import numpy as np

model_dir, config_json, good_path = sys.argv[2:5]
spec = importlib.util.spec_from_file_location("preprocess_model", f"{model_dir}/1/model.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
model = module.TritonPythonModel()
model.initialize(
    {"model_config": open(config_json).read(), "model_repository": model_dir, "model_version": "1"}
)
good = open(good_path, "rb").read()
requests = [{"IMAGE": pb.Tensor("IMAGE", np.array([[good]], dtype=object))},
            {"IMAGE": pb.Tensor("IMAGE", np.array([[b"not an image"]], dtype=object))}]
ok, bad = model.execute(requests)
assert ok.error is None, ok.error
heavy = ("torch", "onnxruntime", "tritonclient")
print(json.dumps({"shapes": [list(t.as_numpy().shape) for t in ok.output_tensors], "error": bad.error.message,
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in heavy)}))
"""


def test_server_image_python_is_enough_for_preprocess(tiny_repository, tmp_path, photos):
    """The preprocess backend and its manifest check run with only what the server stage installs.

    A subprocess refuses every import outside the standard library, numpy, Pillow and fitguard, loads the
    exported ``preprocess/1/model.py`` as Triton would (config as JSON), and answers a good and a bad image.
    """
    import json

    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    from fitguard.preprocess import encode_image

    config = text_format.Parse(
        (tiny_repository / "preprocess" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    (tmp_path / "config.json").write_text(json_format.MessageToJson(config, preserving_proto_field_name=True))
    (tmp_path / "good.png").write_bytes(encode_image(photos["chelsea"]))
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _SERVER_IMAGE_CHECK,
            _FAKE_PB_UTILS,
            str(tiny_repository / "preprocess"),
            str(tmp_path / "config.json"),
            str(tmp_path / "good.png"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    patches = int(config.output[1].dims[0])
    assert result["shapes"] == [[1, 3, 224, 224], [1, patches, 3, 224, 224]]
    assert "bad image" in result["error"]
    assert result["loaded"] == []


@pytest.mark.server
@pytest.mark.slow
@pytest.mark.reliability
def test_entrypoint_exits_when_a_step_dies(repository_copy, tmp_path):
    """SIGKILL of a step's process: the watchdog sees it and the container exits 70 (to be restarted)."""
    from fitguard.serve.process import stub_processes

    env, ports = entrypoint_env(repository_copy, FITGUARD_CANARY_INTERVAL="1", FITGUARD_FAIL_AFTER="3")
    health = [sys.executable, "-m", "fitguard.cli", "health", "--url", f"127.0.0.1:{ports['http']}"]
    server = Entrypoint(env, tmp_path / "entrypoint.log")
    try:
        server.wait_ready(ports["http"])
        deadline = time.monotonic() + 30
        while subprocess.run(health, capture_output=True).returncode:
            assert time.monotonic() < deadline, "the deep check never passed"
            time.sleep(0.5)
        (pid,) = [p for name, p in stub_processes(server.proc.pid).items() if name.startswith("preprocess_")]
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        probe = subprocess.run(health, capture_output=True, text=True)
        assert probe.returncode == 1 and "step_down" in probe.stdout, probe.stdout
        assert len(probe.stdout.strip().splitlines()) == 1
        code = server.proc.wait(timeout=30)
        print(f"\nentrypoint exited {code} {time.monotonic() - killed:.1f} s after the kill")
        assert code == 70, server.log()[-3000:]
        assert "so the container is restarted" in server.log()
    finally:
        server.stop()
