"""Distorted: the paper's distortions x five levels of a photo-balanced subset of the originals."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from fitguard.training.image_groups import DISTORTED, ImageGroup, make_group, spread_subset


def distorted_group(
    originals: ImageGroup,
    kinds: Sequence[str] | None = None,
    levels: Sequence[int] | None = None,
    max_sources: int | None = None,
) -> ImageGroup:
    """Every kind x level of (a photo-balanced subset of) the originals; noise seeded by the original."""
    from fitguard.training.data.distortions import LEVELS, PAPER_DISTORTIONS, distort

    kinds = tuple(PAPER_DISTORTIONS if kinds is None else kinds)
    levels = tuple(LEVELS if levels is None else levels)
    chosen = spread_subset(originals.sources, max_sources)
    t0 = time.perf_counter()
    imgs, pairs, tags, lv = [], [], [], []
    for i in tqdm(chosen.tolist(), desc="distorted: generate", leave=False):
        for kind in kinds:
            for level in levels:
                imgs.append(distort(originals.images[i], kind, level, seed=i))
                pairs.append(i)
                tags.append(kind)
                lv.append(level)
    pairs_arr = np.asarray(pairs, dtype=np.int64)
    meta = {
        "kinds": list(kinds),
        "levels": list(levels),
        "sources": len(chosen),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return make_group(
        DISTORTED,
        np.stack(imgs),
        originals.labels[pairs_arr],
        pairs_arr,
        originals.sources[pairs_arr],
        tags,
        lv,
        meta,
    )
