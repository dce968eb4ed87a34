"""Exports that prove themselves: each graph is checked and run beside its original before it is written.

``onnx.checker`` (full check, with shape inference), then ONNX Runtime and the original side by side
on real photos (scikit-image), at a batch size other than the export one, through the same
preprocessing the server uses. A check outside its tolerance raises :class:`ParityError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx

from fitguard.contract import (
    CLASSIFIER,
    CLASSIFIER_INPUT,
    DETECTOR,
    ENERGY,
    FIT,
    FIT_SCORE,
    IQA_PATCHES,
    PROBS,
    QUALITY_MODEL,
    QUALITY_SCORE,
    TOP5_IDS,
    TOP5_PROBS,
)
from fitguard.export.onnx_export import EXPORT_BATCH, probe_inputs

VERIFY_PHOTOS: tuple[str, ...] = ("chelsea", "astronaut", "coffee")  # 3 != EXPORT_BATCH
assert len(VERIFY_PHOTOS) != EXPORT_BATCH


class ParityError(RuntimeError):
    """An exported graph does not reproduce its original within tolerance."""


@dataclass(frozen=True)
class Tolerances:
    prob: float = 1e-4  # max |delta probability|
    quality: float = 1e-4  # max |delta quality|
    score: float = 1e-4  # max |delta FIT_SCORE|


# Per precision; a lower precision adds its own (looser) entry beside its transform in onnx_export.
TOLERANCES: dict[str, Tolerances] = {"fp32": Tolerances()}


@dataclass
class ParityReport:
    """Measured deltas of one graph against its original."""

    model: str
    batch: int
    deltas: dict[str, float]  # name -> measured max |delta|
    limits: dict[str, float]  # name -> tolerance
    mismatches: dict[str, int] = field(
        default_factory=dict
    )  # name -> rows that must be identical but are not

    @property
    def passed(self) -> bool:
        return all(self.deltas[k] <= self.limits[k] for k in self.limits) and not any(
            self.mismatches.values()
        )

    def line(self) -> str:
        parts = [f"max|d{k}| {self.deltas[k]:.2e} (tol {self.limits[k]:.0e})" for k in self.limits]
        parts += [f"{k} mismatches {v}/{self.batch}" for k, v in self.mismatches.items()]
        return (
            f"{self.model:<10} batch {self.batch:<4} "
            + "  ".join(parts)
            + ("  OK" if self.passed else "  FAILED")
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def check_graph(model: onnx.ModelProto, name: str) -> None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise ParityError(f"{name}: onnx.checker rejects the graph: {exc}") from None


def session(model: onnx.ModelProto) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def verification_inputs(settings: Any, names: Sequence[str] = VERIFY_PHOTOS) -> tuple[np.ndarray, np.ndarray]:
    """Real photos through the served preprocessing: (crops [B, 3, 224, 224], patches [B, P, 3, 224, 224])."""
    from skimage import data

    from fitguard.preprocess import encode_image

    return settings.prepare_batch([encode_image(getattr(data, name)()) for name in names])


def scaled_error(got: np.ndarray, want: np.ndarray) -> float:
    """Largest absolute difference over ``1 + max |want|``: for unbounded values (energies, features)
    compared against a tolerance made for numbers of order one."""
    return float(np.max(np.abs(got - want))) / (1.0 + float(np.max(np.abs(want))))


def check_classifier(
    model: onnx.ModelProto, classifier: Any, inputs: np.ndarray, tol: Tolerances
) -> tuple[ParityReport, np.ndarray, np.ndarray]:
    """Returns the report and the original's probabilities and energies (the detector check reuses them).

    Energy is compared by :func:`scaled_error` (logsumexp of logits is an unbounded number)."""
    import torch

    probs, energy = session(model).run([PROBS, ENERGY], {CLASSIFIER_INPUT: inputs})
    with torch.inference_mode():
        expected, expected_energy = (t.numpy() for t in classifier(torch.from_numpy(inputs)))
    if probs.shape != expected.shape:
        raise ParityError(f"classifier: graph gives shape {probs.shape}, original {expected.shape}")
    top = np.argsort(-probs, axis=1, kind="stable")[:, :5]
    top_expected = np.argsort(-expected, axis=1, kind="stable")[:, :5]
    report = ParityReport(
        CLASSIFIER,
        len(inputs),
        {
            "prob": float(np.max(np.abs(probs - expected))),
            "energy": scaled_error(energy, expected_energy),
        },
        {"prob": tol.prob, "energy": tol.prob},
        {"top5": int(np.sum(np.any(top != top_expected, axis=1)))},
    )
    return report, expected, expected_energy


def check_quality(
    model: onnx.ModelProto, quality_model: Any, patches: np.ndarray, tol: Tolerances
) -> tuple[ParityReport, np.ndarray]:
    import torch

    (quality,) = session(model).run([QUALITY_SCORE], {IQA_PATCHES: patches})
    with torch.inference_mode():
        expected = quality_model(torch.from_numpy(patches)).numpy()
    if quality.shape != expected.shape:
        raise ParityError(f"quality: graph gives shape {quality.shape}, original {expected.shape}")
    report = ParityReport(
        QUALITY_MODEL,
        len(patches),
        {"quality": float(np.max(np.abs(quality - expected)))},
        {"quality": tol.quality},
    )
    return report, expected


def check_detector(
    model: onnx.ModelProto,
    detector: Any,
    probs: np.ndarray,
    quality: np.ndarray,
    energy: np.ndarray,
    tol: Tolerances,
    probe_rows: int = 256,
) -> ParityReport:
    """The detector graph against numpy top-5 + scikit-learn on the given (real) rows, which must agree
    exactly on top-5 and verdict, plus probe rows spread over the feature space, where a verdict may
    only differ for a score within the tolerance of the threshold."""
    from fitguard.reference import reference_outputs

    probe_probs, probe_quality, probe_energy = probe_inputs(probe_rows, seed=2, num_classes=probs.shape[1])
    all_probs = np.concatenate([probs.astype(np.float32), probe_probs])
    all_quality = np.concatenate([quality.reshape(-1, 1).astype(np.float32), probe_quality])
    all_energy = np.concatenate([energy.reshape(-1, 1).astype(np.float32), probe_energy])
    names = [TOP5_IDS, TOP5_PROBS, FIT, FIT_SCORE]
    got = dict(
        zip(
            names,
            session(model).run(names, {PROBS: all_probs, QUALITY_SCORE: all_quality, ENERGY: all_energy}),
            strict=True,
        )
    )
    want = reference_outputs(all_probs, all_quality, detector, all_energy)
    real = len(probs)
    verdict_diff = got[FIT].ravel() != want[FIT].ravel()
    ambiguous = np.abs(want[FIT_SCORE].ravel()) <= tol.score
    return ParityReport(
        DETECTOR,
        len(all_probs),
        {
            "score": float(np.max(np.abs(got[FIT_SCORE] - want[FIT_SCORE]))),
            "prob": float(np.max(np.abs(got[TOP5_PROBS] - want[TOP5_PROBS]))),
        },
        {"score": tol.score, "prob": tol.prob},
        {
            "top5": int(np.sum(np.any(got[TOP5_IDS][:real] != want[TOP5_IDS][:real], axis=1))),
            "verdict": int(np.sum(verdict_diff[:real]) + np.sum(verdict_diff[real:] & ~ambiguous[real:])),
        },
    )
