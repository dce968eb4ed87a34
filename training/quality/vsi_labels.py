"""VSI labels of distorted views against their clean view: computed once, in parallel, cached.

The labels of the scenes set are a full-reference metric (VSI, :mod:`fitguard.training.quality.data`) of
thousands of distorted views. Each photo's views are one job; jobs run in a process pool over the cores
(one torch thread each: the small images keep a thread pool busy less than separate processes), and each
view's values are cached in the data cache under a key of the crop's bytes, the distortion specs, the
distortion code and piq's version, so a rebuild with nothing changed does not pay for them again.

The labels of the offline scenes set ship with the project (:data:`SHIPPED`, under the same keys): they
are a fixed function of fixed package files, so a fresh clone reads them instead of computing them. A
view the file does not hold (another package version, changed distortion code) is computed as above;
``scripts/ship_vsi_labels.py`` rewrites the file.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from fitguard.training.data.distortions import distort

SHIPPED = Path(__file__).with_name("vsi_labels.npz")
VSI_VERSION = "vsi-labels/1"  # bump when the label recipe changes in a way the key does not see
Spec = tuple[str, int, int]  # distortion kind, level, seed
Job = list[tuple[np.ndarray, list[Spec]]]  # one photo: (clean view, its distortions) per view


def _vsi(distorted: Sequence[np.ndarray], reference: np.ndarray) -> np.ndarray:
    import piq
    import torch

    ref = torch.from_numpy(np.array(reference)).permute(2, 0, 1)[None].float() / 255.0
    batch = torch.from_numpy(np.stack(distorted)).permute(0, 3, 1, 2).float() / 255.0
    with torch.inference_mode():
        return piq.vsi(batch, ref.expand_as(batch), data_range=1.0, reduction="none").double().numpy()


@functools.cache
def _code_digest() -> bytes:
    """What, beside a view's pixels and specs, makes its labels: read once per process."""
    import piq

    from fitguard.training.data import distortions

    return repr((VSI_VERSION, piq.__version__)).encode() + inspect.getsource(distortions).encode()


def label_key(crop: np.ndarray, specs: list[Spec]) -> str:
    """Names one view's labels: its pixels, its distortions, the label code and piq's version."""
    digest = hashlib.sha256(np.ascontiguousarray(crop).tobytes())
    digest.update(repr((crop.shape, specs)).encode())
    digest.update(_code_digest())
    return digest.hexdigest()[:24]


@functools.cache
def shipped_labels() -> dict[str, np.ndarray]:
    """The labels that ship with the project, by :func:`label_key` (empty if the file is absent)."""
    if not SHIPPED.exists():
        return {}
    with np.load(SHIPPED) as z:
        return {key: z[key] for key in z.files}


def _cache_path(key: str) -> Path:
    from fitguard.cache import cache_root

    return cache_root() / "data" / "vsi" / f"{key}.npy"


def _known(crop: np.ndarray, specs: list[Spec]) -> bool:
    if not specs:
        return True
    key = label_key(crop, specs)
    return key in shipped_labels() or _cache_path(key).exists()


def view_vsi(crop: np.ndarray, specs: list[Spec]) -> np.ndarray:
    """VSI of each (kind, level, seed) distortion of ``crop`` against it, from the cache where present."""
    if not specs:
        return np.zeros(0)
    key = label_key(crop, specs)
    shipped = shipped_labels().get(key)
    if shipped is not None:
        return shipped
    path = _cache_path(key)
    if path.exists():
        return np.load(path)
    raw = _vsi([distort(crop, k, lvl, s) for k, lvl, s in specs], crop)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, raw)
    os.replace(tmp, path)  # whole files only: workers may race on one key
    return raw


def _photo(job: Job) -> list[np.ndarray]:
    return [view_vsi(crop, specs) for crop, specs in job]


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def vsi_labels(
    jobs: list[Job], *, workers: int | None = None, progress: bool = False
) -> list[list[np.ndarray]]:
    """Per photo, per view: the VSI values of its distortions (see the module docstring)."""
    from tqdm.auto import tqdm

    workers = workers or os.cpu_count() or 1
    if workers == 1 or all(_known(c, s) for job in jobs for c, s in job):
        return [_photo(job) for job in tqdm(jobs, desc="labels (VSI)", unit="photo", disable=not progress)]
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_one_thread) as pool:
        results = pool.map(_photo, jobs)
        return list(tqdm(results, total=len(jobs), desc="labels (VSI)", unit="photo", disable=not progress))


def write_shipped(jobs: list[Job], labels: list[list[np.ndarray]], path: Path = SHIPPED) -> int:
    """Write the labels of ``jobs`` (as :func:`vsi_labels` returned them) to the shipped file; returns
    the number of views written."""
    table = {
        label_key(crop, specs): np.asarray(raw, dtype=np.float64)
        for job, raws in zip(jobs, labels, strict=True)
        for (crop, specs), raw in zip(job, raws, strict=True)
        if specs
    }
    np.savez_compressed(path, **table)
    shipped_labels.cache_clear()
    return len(table)
