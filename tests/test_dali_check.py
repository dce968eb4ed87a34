"""The validating step ahead of DALI (fitguard.dali_check), without Triton: what it refuses from the header
alone, in the Python step's words, and what it leaves to the decoder."""

from __future__ import annotations

import time

import numpy as np
import pytest
from reliability.corpus import bad_inputs, png_header_bomb

from fitguard.dali_check import check_header, refusal, sniff
from fitguard.dali_preprocess import CpuRunner, Geometry
from fitguard.photos import package_photos
from fitguard.preprocess import BadImageError, Limits, PreprocessSettings, decode_image, encode_image
from fitguard.presets import preset_for

# Only the decoder can find these: the header is valid, the body is not.
BODY_ONLY = {"truncated_jpeg", "truncated_png", "corrupted_jpeg", "corrupted_png"}
NOT_DALI_FORMATS = {"animated_gif", "ico"}  # decoded by the Python step (Pillow), not by DALI


def _python_reason(payload: bytes) -> str | None:
    try:
        decode_image(payload)
    except BadImageError as exc:
        return str(exc)
    return None


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")  # the corpus's broken APP1, on purpose
def test_the_corpus_is_refused_from_headers_or_left_to_the_decoder() -> None:
    passed = set()
    for case in bad_inputs():
        try:
            check_header(case.payload)
        except BadImageError as exc:
            assert case.expect != "verdict" or case.name in NOT_DALI_FORMATS, (case.name, exc)
            python = _python_reason(case.payload)
            # the limits and bombs are refused in the Python step's own words
            if (
                python
                and python.startswith(("empty", "image", "decompression", "input is"))
                and "GIF" not in str(exc)
            ):
                assert str(exc).split(":")[0] == python.split(":")[0], (case.name, exc, python)
            continue
        passed.add(case.name)
    refused_by_python = {c.name for c in bad_inputs() if c.expect == "error"}
    assert passed & refused_by_python == BODY_ONLY - {"truncated_jpeg", "corrupted_jpeg"}
    assert {c.name for c in bad_inputs() if c.expect == "verdict"} - passed == {"animated_gif"}
    with pytest.raises(BadImageError, match="GIF is not among the DALI step's formats"):
        check_header(next(c.payload for c in bad_inputs() if c.name == "animated_gif"))
    assert passed >= BODY_ONLY


def test_the_limits_are_the_python_steps() -> None:
    photo = encode_image(package_photos(["coffee"])["coffee"])  # 400 x 600
    assert check_header(photo).width == 600 and check_header(photo).height == 400
    for limits, words in (
        (Limits(max_bytes=1000), "more than the limit of 1000"),
        (Limits(max_pixels=200_000), "pixels, more than the limit"),
        (Limits(max_side=500), "exceeds the limit of 500"),
        (Limits(max_aspect=1.4), "aspect ratio"),
    ):
        with pytest.raises(BadImageError, match=words):
            check_header(photo, limits)
        with pytest.raises(BadImageError, match=words):
            decode_image(photo, limits)


def test_nothing_is_decoded() -> None:
    """A header bomb is refused at once, and a valid header over garbage passes (the decoder's to find)."""
    start = time.perf_counter()
    with pytest.raises(BadImageError, match="decompression bomb"):
        check_header(png_header_bomb())
    assert time.perf_counter() - start < 0.5  # decoding 50000 x 50000 would take minutes and 7.5 GB
    photo = encode_image(package_photos(["coffee"])["coffee"], "JPEG", 90)
    garbage = photo[:2000] + bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8))
    assert check_header(garbage).format == "JPEG"
    assert sniff(b"GIF89a") is None and sniff(b"RIFF\0\0\0\0WEBPVP8 ") == "WEBP"


def test_refusals_say_whose_fault_it_is() -> None:
    message, bad = refusal("DALI Backend error: Error in CPU operator `decoders.image`: Failed to decode")
    assert bad and message.startswith("bad image: the DALI step could not decode it (")
    for server_side in (
        "Request for unknown model: 'preprocess_dali' is not found",
        "request timeout expired",
    ):
        assert refusal(server_side) == (server_side, False)


@pytest.mark.slow
def test_shared_mode_pipeline_emits_the_crop_only() -> None:
    settings = PreprocessSettings(preset_for("resnet152"), 0, backbone="resnet152", quality_features="shared")
    photos = [encode_image(rgb) for rgb in package_photos(["chelsea", "rocket"]).values()]
    crops, patches = CpuRunner(Geometry.from_settings(settings), batch_size=2).prepare_batch(photos)
    want, none = settings.prepare_batch(photos)
    assert patches is None and none is None
    assert np.abs(crops.astype(np.int16) - want).max() <= 1


def test_the_cost_script_prints_and_writes_its_figures(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    import json
    import runpy
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "dali_check_cost.py"
    main = runpy.run_path(str(script))["main"]
    assert main(["--sizes", "300", "--repeats", "2", "--json", str(tmp_path / "cost.json")]) == 0
    rows = json.loads((tmp_path / "cost.json").read_text())
    assert set(rows) == {"JPEG 300", "PNG (as shipped)"}
    for row in rows.values():  # headers only: far cheaper than decoding the same files
        assert 0 < row["us_per_image_median"] < row["python_step_us_per_image"]
    assert "check us/image" in capsys.readouterr().out


def test_the_sdk_names_a_dali_repository_of_an_earlier_export() -> None:
    """Before the validating step, DALI repositories took IMAGE as UINT8 [-1]: the SDK refuses one on
    connect and says what to do, instead of sending BYTES it would misread."""
    from fitguard import contract
    from fitguard.client.errors import ContractMismatch
    from fitguard.client.signature import check_signature

    outputs = [
        {"name": t.name, "datatype": t.datatype, "shape": [-1, *t.shape]} for t in contract.ENSEMBLE_OUTPUTS
    ]
    old = {
        "name": contract.ENSEMBLE,
        "inputs": [{"name": contract.IMAGE, "datatype": "UINT8", "shape": [-1, -1]}],
    }
    with pytest.raises(ContractMismatch, match="DALI repository of an earlier export: re-export it"):
        check_signature({**old, "outputs": outputs}, {"max_batch_size": 16}, "localhost:8001")
    new = {
        **old,
        "inputs": [{"name": contract.IMAGE, "datatype": "BYTES", "shape": [-1, 1]}],
        "outputs": outputs,
    }
    assert check_signature(new, {"max_batch_size": 16}, "localhost:8001").max_batch_size == 16
