"""The quality head's protocol on the build's cached features: held out by scene.

Its own file, so the test runner can give it a worker beside the other build tests. It runs the protocol
of ``make report`` (``fitguard train iqa`` on the scenes set, :mod:`fitguard.training.quality.train`) on
reduced settings: two splits, and nothing it does not check (no left-out kinds, final head or
figures). The head against BRISQUE on these splits is the report's figure (docs/iqa.md): BRISQUE's
features of two thousand images cost minutes, and its protocol is tested on a small set with known
answers (tests/test_iqa_eval.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.build]

# Floors under the shared-mode quality head's held-out figures on the scenes set (docs/iqa.md, ten
# splits); a two-split mean wanders by about one split spread, so each floor sits two spreads below.
SRCC_FLOOR, PLCC_FLOOR = 0.77, 0.84


def test_quality_evaluation_on_held_out_scenes(build_dir: Path) -> None:
    """Held-out SRCC and PLCC of the build's head recipe, from the features the build cached."""
    from fitguard.backbones import build_backbone
    from fitguard.contract import SHARED_MODE
    from fitguard.training.quality.data import load_quality_set
    from fitguard.training.quality.evaluate import Labels, reference_splits, scene_protocol
    from fitguard.training.quality.features import patch_features
    from fitguard.training.quality.head import default_head_config, head_fit

    items = load_quality_set("scenes")
    labels = Labels.from_items(items)
    feats, unique = patch_features(
        [it.load for it in items],
        build_backbone("efficientnet_lite0"),
        patches=1,
        cache_dir=None,  # the shared feature cache, where the build put them
        progress=False,
        mode=SHARED_MODE,
    )
    fit = head_fit(feats, unique, labels, default_head_config("scenes"), seed=0, val_groups=labels.views)
    splits = reference_splits(labels.references, 2, seed=0)
    summary, _ = scene_protocol(fit, labels, splits)
    assert summary["srcc_mean"] >= SRCC_FLOOR and summary["plcc_mean"] >= PLCC_FLOOR, summary
