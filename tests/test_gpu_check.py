"""scripts/gpu_check.py: the GPU command runs here in its CPU dry-run mode and writes the full schema."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fitguard.bench.gpu_check import MLPERF_RESNET50_H200, PRECISIONS, SCHEMA, main
from fitguard.bench.gpu_models import VARIANTS

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


@pytest.mark.slow
def test_dry_run_writes_the_whole_schema(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    saved = subprocess.run(
        [sys.executable, str(SCRIPT), "--save-photos", str(photos)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert len(saved.stdout.split()) == len(list(photos.glob("*.jpg"))) >= 3
    out = tmp_path / "gpu_check.json"
    assert main(["--dry-run", "--images", str(photos), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["schema"] == SCHEMA and result["config"]["dry_run"] and result["config"]["device"] == "cpu"
    assert any("random weights" in note for note in result["notes"])
    assert any(str(photos) in note for note in result["notes"])
    assert result["bf16_matmul_peak"]["flops_per_s"] > 0
    for kind in ("classifier", "quality"):
        assert set(result["models"][kind]) == {v.name for v in VARIANTS}
        for variant in VARIANTS:
            entry = result["models"][kind][variant.name]
            if variant.graph:  # CUDA graphs only on a CUDA device
                assert "skipped" in entry
                continue
            for batch in result["config"]["batches"]:
                r = entry["batches"][str(batch)]
                assert r["images_per_s"] > 0 and r["latency_ms"]["p50"] > 0 and r["share_of_bf16_peak"] > 0
    for side in result["config"]["decode_sizes"]:
        entry = result["decode"][str(side)]
        assert entry["cpu_pillow"]["images_per_s"] > 0 and entry["gpu_torchvision"]["images_per_s"] > 0
    flops = result["flops_per_image"]
    anchor = result["ceiling"]["anchor"]
    expected = (
        MLPERF_RESNET50_H200["samples_per_s"]
        * flops["resnet50"]
        / (flops["classifier"] + flops["quality_per_image"])
    )
    assert anchor["scaled_images_per_s"] == pytest.approx(expected, rel=1e-3)
    for precision in PRECISIONS:
        p = result["ceiling"]["per_precision"][precision]
        clf, q = p["classifier_best"]["images_per_s"], p["quality_best"]["images_per_s"]
        assert p["models_images_per_s"] == pytest.approx(1 / (1 / clf + 1 / q), rel=1e-2, abs=0.01)
        for side, limit in p["ceiling_images_per_s"].items():
            gpu = result["decode"][side]["gpu_torchvision"]["images_per_s"]
            assert limit["with_gpu_decode"] == pytest.approx(
                min(gpu, p["models_images_per_s"]), rel=1e-2, abs=0.01
            )
    for side in result["config"]["decode_sizes"]:  # the DALI repository's preprocessing, both modes
        entry = result["dali"][str(side)]
        assert 0 < entry["check"]["us_per_image_median"] <= entry["check"]["us_per_image_max"]
        for mode in ("dali_patches", "dali_shared"):
            assert entry[mode]["device"] == "cpu" and entry[mode]["images_per_s"] > 0
    assert set(result["phases_s"]) == {"setup", "classifier", "quality", "decode", "dali"}
    assert result["runtime_s"] < 8 * 60


def test_without_a_gpu_the_real_run_refuses(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["--out", str(tmp_path / "x.json")]) == 2
    assert "--dry-run" in capsys.readouterr().err
