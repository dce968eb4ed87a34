"""The SDK and ``fitguard classify`` say which calibration judged a verdict (``fitguard calibrate``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from fitguard import contract
from fitguard.cli import main
from fitguard.client import Calibration, FitClient
from fitguard.client.cli import calibration_line
from fitguard.client.signature import check_signature
from fitguard.client.transport import Connection

CALIBRATED = {
    "max_batch_size": 8,
    "parameters": {
        "calibration_id": {"string_value": "cal-0123456789ab"},
        "calibration_threshold": {"string_value": "0.25"},
        "calibration_guarantee": {"string_value": "selective risk <= 0.1 with probability >= 0.9"},
    },
    # gRPC's JSON form writes int64 as a string
    "ensemble_scheduling": {
        "step": [{"model_name": "preprocess"}, {"model_name": "detector", "model_version": "2"}]
    },
}


def _metadata() -> dict[str, Any]:
    def tensors(ts: tuple[contract.Tensor, ...]) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": [-1, *t.shape]} for t in ts]

    return {
        "name": "fitguard",
        "versions": ["1"],
        "platform": "ensemble",
        "inputs": tensors(contract.ENSEMBLE_INPUTS),
        "outputs": tensors(contract.ENSEMBLE_OUTPUTS),
    }


class _Transport:
    """Answers class 7 with FIT_SCORE 0.5 for every image, from a calibrated ensemble config."""

    thread_safe = True

    def __init__(self, conn: Connection, config: dict[str, Any]) -> None:
        self.config = config

    def model_ready(self, model: str) -> bool:
        return True

    def model_metadata(self, model: str) -> dict[str, Any]:
        return _metadata()

    def model_config(self, model: str) -> dict[str, Any]:
        return self.config

    def models(self) -> list[str]:
        return ["fitguard"]

    def infer(self, model: str, payloads: list[bytes]) -> tuple[dict[str, np.ndarray], str]:
        n = len(payloads)
        outputs = {
            contract.CLASS_ID: np.full((n, 1), 7, np.int64),
            contract.TOP5_IDS: np.tile(np.arange(7, 12, dtype=np.int64), (n, 1)),
            contract.TOP5_PROBS: np.tile(np.array([0.6, 0.2, 0.1, 0.06, 0.04], np.float32), (n, 1)),
            contract.QUALITY_SCORE: np.full((n, 1), 0.5, np.float32),
            contract.FIT: np.ones((n, 1), bool),
            contract.FIT_SCORE: np.full((n, 1), 0.5, np.float32),
        }
        return outputs, "1"

    def close(self) -> None:
        pass


def test_model_info_reads_the_calibration() -> None:
    info = check_signature(_metadata(), CALIBRATED, "test")
    assert info.calibration == Calibration(
        "cal-0123456789ab", "2", 0.25, "selective risk <= 0.1 with probability >= 0.9"
    )
    assert check_signature(_metadata(), {"max_batch_size": 8}, "test").calibration == Calibration()


@pytest.mark.parametrize("config", [CALIBRATED, {"max_batch_size": 8}])
def test_verdicts_say_which_calibration_judged_them(config: dict[str, Any]) -> None:
    with FitClient("test:1", transport_factory=lambda conn: _Transport(conn, config)) as client:
        verdict = client.classify(b"image")
    calibrated = "parameters" in config
    assert verdict.calibration_id == ("cal-0123456789ab" if calibrated else None)
    assert verdict.detector_version == ("2" if calibrated else None)
    row = verdict.to_dict()
    assert (row["calibration_id"], row["detector_version"]) == (
        verdict.calibration_id,
        verdict.detector_version,
    )


def test_calibration_line() -> None:
    assert "none" in calibration_line(Calibration())
    line = calibration_line(Calibration("cal-0123456789ab", "2", 0.25, "risk <= 0.1"))
    assert "cal-0123456789ab (detector version 2): risk <= 0.1" in line


@pytest.mark.server
@pytest.mark.slow
def test_classify_reports_the_served_calibration(
    tmp_path: Path, tiny_repository: Path, photos: dict[str, np.ndarray], capsys: pytest.CaptureFixture[str]
) -> None:
    from fitguard.serve import EmbeddedServer

    (tmp_path / "imgs").mkdir()
    for name, rgb in photos.items():
        Image.fromarray(rgb).save(tmp_path / "imgs" / f"{name}.png")
    args = ["--images", str(tmp_path / "imgs"), "--target-pass-rate", "0.5", "--holdout", "0"]
    assert (
        main(["calibrate", "--model-repository", str(tiny_repository), "--out", str(tmp_path / "new"), *args])
        == 0
    )
    calibration_id = json.loads((tmp_path / "new.calibration/report.json").read_text())["id"]
    capsys.readouterr()
    with EmbeddedServer(tmp_path / "new", http_port=0, grpc_port=0, metrics_port=0) as server:
        assert main(["classify", "--url", server.grpc_url, "--json", str(tmp_path / "imgs")]) == 0
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert main(["classify", "--url", server.http_url, "--protocol", "http", str(tmp_path / "imgs")]) == 0
        table = capsys.readouterr().out
    assert len(rows) == len(photos)
    assert {(r["calibration_id"], r["detector_version"]) for r in rows} == {(calibration_id, "2")}
    assert f"calibration: {calibration_id} (detector version 2): pass rate 0.5" in table
