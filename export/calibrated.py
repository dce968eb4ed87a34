"""Write a calibrated copy of a repository: a new detector version that differs only in its threshold.

The detector graph computes ``FIT_SCORE = confidence - fg_threshold``, so a new threshold is one
initializer. The copy keeps every earlier version (loaded beside the new one, so the previous verdicts
stay one request away), pins the ensemble's detector step to the new version, records the calibration
in the detector's and the ensemble's config ``parameters`` (the client reads the ensemble's) and in the
manifest, whose checksums are rewritten and verified. Nothing needs torch: onnx, ONNX Runtime and
Triton's config schema.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from fitguard.contract import (
    DETECTOR,
    ENERGY,
    ENSEMBLE,
    FIT,
    FIT_SCORE,
    NUM_CLASSES,
    PROBS,
    QUALITY_SCORE,
)
from fitguard.export.onnx_export import ExportError
from fitguard.manifest import verify_repository, write_manifest
from fitguard.parameters import CALIBRATION_GUARANTEE, CALIBRATION_ID, CALIBRATION_THRESHOLD, THRESHOLD
from fitguard.repository import (
    MANIFEST_NAME,
    MODEL_NAME,
    config_comments,
    config_path,
    model_versions,
    read_config,
    write_config,
)

THRESHOLD_INITIALIZER = "fg_threshold"
_META_PREFIX = "fitguard."


class CalibratedRepositoryError(RuntimeError):
    """A repository cannot be calibrated (no detector version to start from, an unusable target)."""


# ------------------------------------------------------------------------------------------- versions


def detector_versions(repository: str | Path) -> list[int]:
    """The numbered version folders of the detector that hold a model file, ascending."""
    return model_versions(repository, DETECTOR)


def served_version(repository: str | Path) -> int:
    """The detector version the ensemble answers with: its pinned step, else Triton's version policy."""
    versions = detector_versions(repository)
    if not versions:
        raise CalibratedRepositoryError(f"{repository}: no {DETECTOR}/<version>/{MODEL_NAME}")
    ensemble = read_config(config_path(repository, ENSEMBLE))
    for step in ensemble.ensemble_scheduling.step:
        if step.model_name == DETECTOR and step.model_version > 0:
            return int(step.model_version)
    policy = read_config(config_path(repository, DETECTOR)).version_policy
    if policy.WhichOneof("policy_choice") == "specific" and policy.specific.versions:
        return int(max(policy.specific.versions))
    return versions[-1]  # Triton's default policy (latest 1) and `all` both serve the highest


def detector_file(repository: str | Path, version: int) -> Path:
    return Path(repository) / DETECTOR / str(version) / MODEL_NAME


# -------------------------------------------------------------------------------------------- graphs


def graph_threshold(model: onnx.ModelProto) -> float:
    """The threshold the detector graph subtracts (its ``fg_threshold`` initializer)."""
    for tensor in model.graph.initializer:
        if tensor.name == THRESHOLD_INITIALIZER:
            return float(numpy_helper.to_array(tensor).reshape(-1)[0])
    raise CalibratedRepositoryError(f"the detector graph has no {THRESHOLD_INITIALIZER!r} initializer")


def recalibrated_graph(model: onnx.ModelProto, threshold: float, meta: dict[str, str]) -> onnx.ModelProto:
    """A copy of the detector graph with ``threshold`` and ``meta`` (``fitguard.`` keys) set."""
    graph_threshold(model)  # fails on a graph that is not a fitguard detector
    new = onnx.ModelProto()
    new.CopyFrom(model)
    for tensor in new.graph.initializer:
        if tensor.name == THRESHOLD_INITIALIZER:
            tensor.CopyFrom(numpy_helper.from_array(np.array([threshold], np.float32), THRESHOLD_INITIALIZER))
    values = {e.key: e.value for e in new.metadata_props}
    values.update({_META_PREFIX + k: v for k, v in meta.items()})
    del new.metadata_props[:]
    for key, value in values.items():
        entry = new.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(new, full_check=True)
    return new


def probe_feeds(rows: int = 257, seed: int = 2) -> dict[str, np.ndarray]:
    """Detector inputs from flat to peaked logits and qualities in [0, 1], in numpy alone (the export's
    ``probe_inputs`` computes the energy with torch, which serving-side code must not need)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1, (rows, NUM_CLASSES)) * rng.uniform(0.5, 3, (rows, 1))
    np.put_along_axis(logits, rng.integers(0, NUM_CLASSES, (rows, 3)), rng.uniform(0, 20, (rows, 3)), axis=1)
    top = logits.max(axis=1, keepdims=True)
    energy = top + np.log(np.exp(logits - top).sum(axis=1, keepdims=True))
    return {
        PROBS: np.exp(logits - energy).astype(np.float32),
        ENERGY: energy.astype(np.float32),
        QUALITY_SCORE: rng.uniform(0, 1, (rows, 1)).astype(np.float32),
    }


def check_recalibrated(old: onnx.ModelProto, new: onnx.ModelProto, rows: int = 257) -> float:
    """Run both graphs on probe inputs: every output but the verdict must be identical and FIT_SCORE
    shifted by the threshold difference (float32 rounding of the two subtractions allowed). Returns the
    largest deviation of the shift.

    Raises:
        ExportError: the new graph answers otherwise.
    """
    import onnxruntime as ort

    feeds = probe_feeds(rows)
    outs = []
    for model in (old, new):
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        wanted = {k: v for k, v in feeds.items() if k in {i.name for i in session.get_inputs()}}
        outs.append(dict(zip(names, session.run(names, wanted), strict=True)))
    before, after = outs
    shift = np.float32(graph_threshold(old)) - np.float32(graph_threshold(new))
    deviation = float(np.max(np.abs(after[FIT_SCORE] - before[FIT_SCORE] - shift)))
    # One float32 rounding in each subtraction, of numbers as large as the score itself.
    limit = 4 * float(np.finfo(np.float32).eps) * (1.0 + float(np.max(np.abs(before[FIT_SCORE]))))
    problems = [n for n in before if n not in (FIT, FIT_SCORE) and not np.array_equal(before[n], after[n])]
    if deviation > limit:
        problems.append(f"{FIT_SCORE} shift off by {deviation:.3g} (limit {limit:.3g})")
    if not np.array_equal(after[FIT], after[FIT_SCORE] >= 0):
        problems.append(f"{FIT} is not {FIT_SCORE} >= 0")
    if problems:
        raise ExportError("the recalibrated detector answers otherwise: " + "; ".join(problems))
    return deviation


# ------------------------------------------------------------------------------------------- configs


def _write_config(path: Path, config: Any, note: str) -> None:
    write_config(path, config, [*config_comments(path), note])


def _pin_configs(root: Path, version: int, keep: list[int], record: dict[str, Any]) -> None:
    """Serve ``version`` (and load ``keep``), and record the calibration in the configs' parameters."""
    note = f"Detector threshold calibrated by `fitguard calibrate` ({record['id']}): version {version}."
    detector = read_config(config_path(root, DETECTOR))
    detector.version_policy.specific.versions[:] = sorted({*keep, version})
    detector.parameters[THRESHOLD].string_value = repr(record["threshold"])
    detector.parameters[CALIBRATION_ID].string_value = record["id"]
    _write_config(config_path(root, DETECTOR), detector, note)
    ensemble = read_config(config_path(root, ENSEMBLE))
    steps = [s for s in ensemble.ensemble_scheduling.step if s.model_name == DETECTOR]
    if len(steps) != 1:
        raise CalibratedRepositoryError(f"the ensemble has {len(steps)} {DETECTOR} steps, expected one")
    steps[0].model_version = version
    for key, value in (
        (CALIBRATION_ID, record["id"]),
        (CALIBRATION_THRESHOLD, repr(record["threshold"])),
        (CALIBRATION_GUARANTEE, record["guarantee"]),
    ):
        ensemble.parameters[key].string_value = value
    _write_config(config_path(root, ENSEMBLE), ensemble, note)


# ----------------------------------------------------------------------------------------- repository


def calibration_id(detector_sha256: str, threshold: float, record: dict[str, Any]) -> str:
    """A stable id: the same source detector, threshold and calibration record give the same id."""
    blob = json.dumps({"detector": detector_sha256, "threshold": threshold, **record}, sort_keys=True)
    return "cal-" + hashlib.sha256(blob.encode()).hexdigest()[:12]


def _check_paths(source: Path, out: Path, force: bool) -> None:
    src, dst = source.resolve(), out.resolve()
    if src == dst or src in dst.parents or dst in src.parents:
        raise CalibratedRepositoryError(f"write the calibrated copy outside {source}, not over or in it")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not (out / MANIFEST_NAME).is_file():
            raise FileExistsError(f"{out} exists and is not a fitguard repository; refusing to replace it")
        if not force:
            raise FileExistsError(f"{out} exists; pass --force to replace it")


def _move_into_place(staging: Path, out: Path) -> None:
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        old.rmdir()
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(out)


def write_calibrated(
    source: str | Path, out: str | Path, *, threshold: float, record: dict[str, Any], force: bool = False
) -> dict[str, Any]:
    """Copy ``source`` to ``out`` with a new detector version answering with ``threshold``.

    ``record`` describes the calibration (``guarantee`` in words, the sample, the figures); it is
    completed with the id, versions and thresholds and written to the manifest's ``calibration`` section
    (an earlier calibration of ``source`` kept under ``previous``). All or nothing: the copy is built and
    verified in a staging folder beside ``out``. Returns the completed record.

    Raises:
        RepositoryIntegrityError: ``source`` does not match its manifest.
        CalibratedRepositoryError, FileExistsError: unusable source or target.
        ExportError: the new graph does not answer as the old one shifted by the threshold change.
    """
    source, out = Path(source), Path(out)
    manifest = verify_repository(source)
    _check_paths(source, out, force)
    previous = served_version(source)
    version = max(detector_versions(source)) + 1
    old_graph = onnx.load(str(detector_file(source, previous)))
    threshold = float(np.float32(threshold))
    previous_threshold = graph_threshold(old_graph)
    sha = manifest["files"].get(f"{DETECTOR}/{previous}/{MODEL_NAME}", "")
    full = {
        **record,
        "threshold": threshold,
        "previous_threshold": previous_threshold,
        "detector_version": version,
        "previous_detector_version": previous,
    }
    full = {"id": calibration_id(sha, threshold, full), **full}
    meta = {"threshold": repr(threshold), "calibration_id": full["id"], "calibration": record["guarantee"]}
    new_graph = recalibrated_graph(old_graph, threshold, meta)
    full["graph_check_deviation"] = check_recalibrated(old_graph, new_graph)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        shutil.copytree(source, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        detector_file(staging, version).parent.mkdir()
        onnx.save(new_graph, str(detector_file(staging, version)))
        _pin_configs(staging, version, [previous], full)
        sections = {k: v for k, v in manifest.items() if k not in ("format", "arguments", "files")}
        if "calibration" in sections:
            full["previous"] = sections["calibration"]
        write_manifest(staging, manifest["arguments"], **{**sections, "calibration": full})
        verify_repository(staging)
        os.chmod(staging, 0o755)  # mkdtemp makes 0700; servers in containers may run as another user
        _move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return full
