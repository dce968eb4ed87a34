"""``fitguard bench``: a smoke run against the real embedded server (not a timing test), and the pieces
whose numbers the ratios rest on (FLOP counting, Triton statistics)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fitguard import contract

REQUIRED_RATIOS = (
    "served_vs_inprocess",
    "served_vs_naive",
    "latency_c1_vs_inprocess",
    "preprocess_share",
    "backbone_vs_gemm_peak",
)


def test_onnx_flops_match_torch_flop_counter(tiny_repository: Path) -> None:
    import torch

    from fitguard.backbones import build_backbone
    from fitguard.bench.flops import onnx_flops, pipeline_flops, torch_flops
    from fitguard.classifier import Classifier
    from fitguard.quality import QualityModel, load_head

    net = build_backbone("tiny")
    head, _ = load_head(tiny_repository / "iqa_head.pt", net)
    patches = 3
    crop = torch.zeros(1, 3, contract.INPUT_SIZE, contract.INPUT_SIZE, dtype=torch.uint8)
    expected_cls = torch_flops(Classifier(net).eval(), crop)
    expected_q = torch_flops(QualityModel(net, head).eval(), crop[:, None].expand(1, patches, -1, -1, -1))

    cls_onnx = tiny_repository / contract.CLASSIFIER / "1" / "model.onnx"
    q_onnx = tiny_repository / contract.QUALITY_MODEL / "1" / "model.onnx"
    assert onnx_flops(cls_onnx)["flops"] == expected_cls
    assert onnx_flops(cls_onnx, batch=5)["flops"] == 5 * expected_cls
    counted = pipeline_flops(cls_onnx, q_onnx, patches)
    assert counted["quality"] == expected_q
    assert counted["per_image"] == expected_cls + expected_q
    assert counted["uncounted_ops"] == []


def test_statistics_window_per_image_and_slowest_step() -> None:
    from fitguard.bench import stats

    def model(name: str, images: int, executions: int, infer_ns: int) -> dict:
        # gRPC's JSON spelling: int64 as strings
        per_batch = {"count": str(executions), "ns": str(infer_ns)}
        return {
            "name": name,
            "version": "1",
            "inference_count": str(images),
            "execution_count": str(executions),
            "inference_stats": {
                "success": {"count": str(images), "ns": "1"},
                "queue": {"count": str(images), "ns": str(images * 1_000_000)},
            },
            "batch_stats": [
                {
                    "batch_size": str(images // executions),
                    "compute_infer": per_batch,
                    "compute_input": {"count": str(executions), "ns": "0"},
                    "compute_output": {"count": str(executions), "ns": "0"},
                }
            ],
        }

    before = stats.normalise({"model_stats": [model("classifier", 4, 2, 10_000_000)]})
    after = stats.normalise(
        {"model_stats": [model("classifier", 12, 6, 50_000_000), model("preprocess", 8, 8, 8_000_000)]}
    )
    summary = stats.summarise(stats.diff(before, after), ("preprocess", "classifier"))
    cls = summary["models"]["classifier"]
    assert cls["images"] == 8 and cls["executions"] == 4 and cls["avg_batch_size"] == 2.0
    assert cls["compute_infer_ms_per_image"] == pytest.approx(40 / 8)  # 40 ms over 8 images
    assert cls["queue_ms_per_request"] == pytest.approx(1.0)
    assert summary["models"]["preprocess"]["compute_ms_per_image"] == pytest.approx(1.0)
    assert summary["slowest_step"] == "classifier"


@pytest.mark.slow
@pytest.mark.server
def test_bench_smoke_run_writes_json_and_plot(tiny_repository: Path, tmp_path: Path) -> None:
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    cmd = [
        sys.executable,
        "-m",
        "fitguard.cli",
        "bench",
        "--model-repository",
        str(tiny_repository),
        "--concurrency",
        "1,2",
        "--requests",
        "6",
        "--batch",
        "1",
        "--max-images",
        "4",
        "--reference-requests",
        "3",
        "--naive-requests",
        "2",
        "--gemm-size",
        "256",
        "--level-deadline",
        "60",
        "--json",
        str(out),
        "--plot",
        str(png),
    ]
    # The bound is the point: the command must stop by itself well within this.
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ratios" in done.stdout and "slowest" in done.stdout

    result = json.loads(out.read_text())
    assert result["schema"] == "fitguard.bench/1"
    assert result["machine"]["cpu_model"] and result["machine"]["cores"] >= 1
    for package in ("numpy", "onnxruntime", "tritonclient", "torch"):
        assert package in result["versions"]
    levels = result["served"]["levels"]
    assert [lv["concurrency"] for lv in levels] == [1, 2]
    for lv in levels:
        assert lv["errors"] == 0 and lv["requests"] == 6 and lv["throughput"] > 0
        lat = lv["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
        models = lv["server_stats"]["models"]
        assert set(models) == set(contract.MODELS)
        assert lv["server_stats"]["slowest_step"] in contract.MODELS
        for s in models.values():
            assert s["images"] >= 6 and s["avg_batch_size"] >= 1 and s["compute_ms_per_image"] > 0
    assert result["inprocess"]["batch1"]["throughput"] > 0
    assert result["naive"]["throughput"] > 0
    assert result["gemm_peak"]["peak_gflops"] > 0 and result["flops"]["per_image"] > 0
    for name in REQUIRED_RATIOS:
        value = result["ratios"][name]
        assert isinstance(value, float) and np.isfinite(value) and value > 0, name
    assert 0 < result["ratios"]["preprocess_share"] < 1
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_backbone_alone_runtimes_on_cpu(tiny_repository: Path) -> None:
    """The code path of the GPU command (``--device cuda``), run on the CPU, ONNX Runtime on the
    repository's served classifier graph."""
    from fitguard.bench.gpu import gpu_backbone
    from fitguard.contract import CLASSIFIER
    from fitguard.repository import model_path

    graph = model_path(tiny_repository, CLASSIFIER)
    result = gpu_backbone("tiny", None, [1, 2], seconds=0.2, device="cpu", classifier_graph=graph)
    assert result["flops_per_image"] > 0
    assert set(result["runtimes"]) == {"torch-fp32", "torch-bf16-channels-last", "onnxruntime-cpu-fp32"}
    for per_batch in result["runtimes"].values():
        assert set(per_batch) == {"1", "2"}
        assert all(r["throughput"] > 0 and r["latency_ms"]["p50"] > 0 for r in per_batch.values())
    assert result["best"]["runtime"] in result["runtimes"]
