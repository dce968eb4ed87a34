"""Reduced-scale JPEG decode for the shared mode's crop: the geometry is the full decode's, the pixels stay
close, and every input of the bad-input corpus gets the same kind of answer."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fitguard import contract as c
from fitguard.preprocess import (
    REDUCED_DECODE_MARGIN,
    BadImageError,
    PreprocessSettings,
    classifier_crop,
    decode_image,
    decode_scaled,
    encode_image,
)
from fitguard.presets import preset_for

sys.path.insert(0, str(Path(__file__).parent / "reliability"))
from corpus import bad_inputs  # noqa: E402

PRESET = preset_for("efficientnet_lite0")


def _large_jpeg(rgb: np.ndarray, size: tuple[int, int], orientation: int | None = None) -> bytes:
    img = Image.fromarray(rgb).resize(size, Image.Resampling.BICUBIC)
    grain = np.random.default_rng(0).normal(0, 3, (size[1], size[0], 3))
    img = Image.fromarray(np.clip(np.asarray(img) + grain, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    kwargs = {}
    if orientation:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    img.save(buf, "JPEG", quality=90, **kwargs)
    return buf.getvalue()


def _settings(reduced: bool) -> PreprocessSettings:
    return PreprocessSettings(PRESET, 0, quality_features=c.SHARED_MODE, reduced_decode=reduced)


@pytest.mark.parametrize(
    ("size", "orientation"), [((3000, 2000), None), ((2448, 1632), 6), ((1100, 1100), None)]
)
def test_reduced_decode_keeps_the_crop_geometry_and_stays_close(
    photos: dict[str, np.ndarray], size: tuple[int, int], orientation: int | None
) -> None:
    data = _large_jpeg(photos["coffee"], size, orientation)
    rgb, full = decode_scaled(data, REDUCED_DECODE_MARGIN * PRESET.resize)
    reference = decode_image(data)
    assert full == reference.shape[1::-1]  # width, height after the EXIF turn
    assert min(rgb.shape[:2]) >= REDUCED_DECODE_MARGIN * PRESET.resize
    if min(size) >= 2 * REDUCED_DECODE_MARGIN * PRESET.resize:
        assert rgb.shape[0] < reference.shape[0]  # decoded at 1/2, 1/4 or 1/8
    assert (rgb.shape[0] > rgb.shape[1]) == (reference.shape[0] > reference.shape[1])
    got, _ = _settings(True).prepare(data)
    want = classifier_crop(reference, PRESET)
    assert got.shape == want.shape == (3, PRESET.crop, PRESET.crop)
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert np.percentile(diff, 99) <= 3 and diff.mean() < 1.0, (diff.max(), diff.mean())
    np.testing.assert_array_equal(_settings(False).prepare(data)[0], want)


def test_small_images_and_other_formats_decode_at_full_size(photos: dict[str, np.ndarray]) -> None:
    for data in (encode_image(photos["astronaut"], "JPEG"), encode_image(photos["coffee"])):
        got, _ = _settings(True).prepare(data)
        np.testing.assert_array_equal(got, classifier_crop(decode_image(data), PRESET))
    big_png = encode_image(np.asarray(Image.fromarray(photos["chelsea"]).resize((1800, 1200))))
    assert decode_scaled(big_png, 512)[0].shape == (1200, 1800, 3)


def test_bad_input_corpus_answers_are_unchanged(photos: dict[str, np.ndarray]) -> None:
    corpus = [(b.name, b.payload) for b in bad_inputs()]
    large = _large_jpeg(photos["rocket"], (2400, 1600))
    corpus += [("large truncated jpeg", large[: len(large) // 2]), ("large jpeg", large)]
    for name, payload in corpus:
        answers = []
        for reduced in (True, False):
            try:
                answers.append(_settings(reduced).prepare(payload)[0])
            except BadImageError as exc:
                answers.append(type(exc))
        full, reduced = answers[1], answers[0]
        if isinstance(full, np.ndarray):
            assert isinstance(reduced, np.ndarray), name
            assert np.percentile(np.abs(reduced.astype(np.int16) - full.astype(np.int16)), 99) <= 3, name
        else:
            assert reduced is full, name
