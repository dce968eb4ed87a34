"""Training and serving cut the same pixels: one crop geometry for both sides.

The detector is trained on canvases whose classifier crop and quality patches are cut by the training
code; the server cuts them from the decoded request. A canvas sent to the preprocess step must give byte
for byte what training fed the models, for odd and even margins alike.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tqdm")  # the training extra

from fitguard.contract import DEFAULT_PATCHES  # noqa: E402
from fitguard.preprocess import PreprocessSettings, encode_image, iqa_patches  # noqa: E402
from fitguard.presets import Preset  # noqa: E402
from fitguard.training.attacks.adversarial import apply_perturbation  # noqa: E402
from fitguard.training.image_groups import classifier_batch  # noqa: E402

# Canvas sides and crop sizes giving even and odd margins; 259 - 224 = 35 is where a floored offset (17)
# and the served rounding (18) part ways.
SIDES = (256, 257, 258, 259, 261)
CROPS = (224, 223)


def served(canvas: np.ndarray, crop: int) -> tuple[np.ndarray, np.ndarray]:
    """What the preprocess backend answers for this canvas as a PNG request (canvas side = resize size)."""
    settings = PreprocessSettings(Preset(resize=canvas.shape[0], crop=crop), patches=DEFAULT_PATCHES)
    return settings.prepare(encode_image(canvas))


@pytest.mark.parametrize("crop", CROPS)
@pytest.mark.parametrize("side", SIDES)
def test_training_crop_and_patches_are_the_served_bytes(side: int, crop: int) -> None:
    canvas = np.random.default_rng(side * 1000 + crop).integers(0, 256, (side, side, 3), dtype=np.uint8)
    served_crop, served_patches = served(canvas, crop)
    train_crop = classifier_batch(canvas[None], crop)[0]  # what predict_logits feeds the classifier
    assert train_crop.shape == served_crop.shape == (3, crop, crop)
    assert train_crop.tobytes() == served_crop.tobytes()
    train_patches = iqa_patches(canvas, DEFAULT_PATCHES)  # what compute_features feeds DTNIQ-f
    assert train_patches.tobytes() == served_patches.tobytes()


@pytest.mark.parametrize("side", SIDES)
def test_a_perturbation_lands_on_the_served_crop(side: int) -> None:
    """The adversarial group adds its perturbation where the server will crop, not a pixel beside it."""
    crop = 224
    canvas = np.full((side, side, 3), 100, np.uint8)
    noise = np.full((3, crop, crop), 10 / 255, np.float32)
    perturbed = apply_perturbation(canvas[None], noise)[0]
    served_crop, _ = served(perturbed, crop)
    assert (served_crop == 110).all()  # every served pixel carries the perturbation
    assert int((perturbed == 110).all(axis=2).sum()) == crop * crop  # and nothing outside the crop does
