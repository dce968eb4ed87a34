"""The VSI labels of the offline scenes set ship with the project and equal what the label code computes."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def jobs():
    from fitguard.training.quality.data import scene_photos, synthetic_jobs

    return synthetic_jobs(scene_photos())


def test_the_shipped_file_holds_every_view_of_the_scenes_set(jobs):
    """A change the keys see (distortion code, piq, the scenes recipe) fails here until
    scripts/ship_vsi_labels.py rewrites the file, instead of silently costing minutes per fresh clone."""
    from fitguard.training.quality.vsi_labels import label_key, shipped_labels

    keys = [label_key(crop, specs) for job in jobs for crop, specs in job if specs]
    missing = [k for k in keys if k not in shipped_labels()]
    assert not missing, f"{len(missing)} of {len(keys)} views not shipped: run scripts/ship_vsi_labels.py"
    assert len(shipped_labels()) == len(set(keys))  # nothing stale rides along


def test_a_recomputed_sample_equals_the_shipped_labels(jobs):
    """VSI in float on one machine is deterministic; 1e-6 leaves room for another CPU's kernels."""
    from fitguard.training.data.distortions import distort
    from fitguard.training.quality.vsi_labels import _vsi, label_key, shipped_labels

    rng = np.random.default_rng(0)
    views = [view for job in jobs for view in job if view[1]]
    for i in rng.choice(len(views), size=3, replace=False):
        crop, specs = views[i]
        fresh = _vsi([distort(crop, k, lvl, s) for k, lvl, s in specs], crop)
        np.testing.assert_allclose(fresh, shipped_labels()[label_key(crop, specs)], rtol=0, atol=1e-6)
