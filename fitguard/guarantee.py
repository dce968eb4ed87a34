"""Detector thresholds with a guarantee, chosen from a deployment's sample of confidences.

Pure functions on arrays (numpy, and scipy.stats for the binomial bounds); no model is involved.

- Labelled sample, :func:`certify_risk`: the largest coverage whose *selective risk* (the share of wrong
  answers among the passed ones) is at most ``target_risk`` with probability at least ``1 - delta``
  (over the draw of the calibration sample). Each candidate threshold is a hypothesis "its risk is above
  the target", rejected when the one-sided Clopper-Pearson upper bound of its errors is at most the
  target; the candidates are tested in a fixed sequence from the strictest threshold down and the scan
  stops at the first one not rejected (Learn then Test, Angelopoulos et al. 2021), so testing many
  thresholds costs nothing in ``delta``.
- Unlabelled sample, :func:`pass_rate_threshold`: the threshold that passes ``target_pass_rate`` of the
  sample, with the distribution-free interval of the pass rate it will have on new images (the passed
  share of the population at an order statistic of the sample is Beta distributed).

Confidences are the detector's ranking before its threshold (``FIT_SCORE + threshold``); an image passes
when its confidence is at least the threshold, exactly as the served graph's ``FIT`` says.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# Below the lowest sampled confidence when every sampled image passes: far enough to pass images a
# little less confident than any in the sample, near enough that FIT_SCORE stays readable.
FULL_COVERAGE_MARGIN = 1.0
# The scan starts at the fewest passed images that could meet the target with this many errors among
# them, so an early mistake or two among the most confident answers does not end it.
START_ERRORS = 2
# needed_images() projects the sample's risk-coverage curve to the coverage where the measured risk is
# this share of the target: at the target itself no finite sample would certify it.
PROJECTION_SHARE = 0.75


class CalibrationError(ValueError):
    """The sample cannot give the requested guarantee (too small, no threshold meets it, bad input)."""


@dataclass(frozen=True)
class RiskCurve:
    """Selective risk at every distinct cut of a sample sorted by confidence, most confident first.

    ``passed[i]`` images pass at ``thresholds[i]``, ``errors[i]`` of them wrong.
    """

    thresholds: np.ndarray
    passed: np.ndarray
    errors: np.ndarray
    n: int

    @property
    def coverage(self) -> np.ndarray:
        return self.passed / self.n

    @property
    def risk(self) -> np.ndarray:
        return self.errors / np.maximum(self.passed, 1)

    def bound(self, delta: float) -> np.ndarray:
        """The one-sided ``1 - delta`` Clopper-Pearson upper bound of the risk at every cut."""
        return risk_upper_bound(self.errors, self.passed, delta)


@dataclass(frozen=True)
class RiskGuarantee:
    """The threshold :func:`certify_risk` chose, and what the calibration sample says about it."""

    threshold: float
    target_risk: float
    delta: float
    n: int
    passed: int
    errors: int
    bound: float
    start: int
    stopped_at: int | None
    pass_interval: tuple[float, float]

    @property
    def coverage(self) -> float:
        return self.passed / self.n

    @property
    def risk(self) -> float:
        return self.errors / self.passed

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "coverage": self.coverage, "risk": self.risk}


@dataclass(frozen=True)
class PassRateGuarantee:
    """The threshold :func:`pass_rate_threshold` chose and the interval of its pass rate on new images."""

    threshold: float
    target_pass_rate: float
    delta: float
    n: int
    passed: int
    interval: tuple[float, float]

    @property
    def pass_rate(self) -> float:
        return self.passed / self.n

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "pass_rate": self.pass_rate}


# ------------------------------------------------------------------------------------------------ bounds


def _check_level(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise CalibrationError(f"{name} must lie strictly between 0 and 1, got {value}")


def risk_upper_bound(errors: Any, passed: Any, delta: float) -> np.ndarray:
    """One-sided ``1 - delta`` Clopper-Pearson upper bound of a rate from ``errors`` out of ``passed``
    (1 where nothing passed or everything was wrong)."""
    from scipy.stats import beta

    k, n = np.asarray(errors, np.float64), np.asarray(passed, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        upper = beta.ppf(1.0 - delta, k + 1.0, n - k)
    return np.where((n <= 0) | (k >= n), 1.0, upper)


def rate_interval(successes: int, n: int, delta: float) -> tuple[float, float]:
    """Two-sided ``1 - delta`` Clopper-Pearson interval of a rate from ``successes`` out of ``n``."""
    from scipy.stats import beta

    if n <= 0:
        return 0.0, 1.0
    low = 0.0 if successes <= 0 else float(beta.ppf(delta / 2, successes, n - successes + 1))
    high = 1.0 if successes >= n else float(beta.ppf(1 - delta / 2, successes + 1, n - successes))
    return low, high


def order_statistic_interval(passed: int, n: int, delta: float) -> tuple[float, float]:
    """Two-sided ``1 - delta`` interval of the population pass rate of a threshold that passes ``passed``
    of ``n`` sampled images (placed between two sampled confidences; continuous confidences assumed)."""
    from scipy.stats import beta

    low = 0.0 if passed <= 0 else float(beta.ppf(delta / 2, passed, n - passed + 1))
    high = 1.0 if passed >= n else float(beta.ppf(1 - delta / 2, passed + 1, n - passed))
    return low, high


def minimum_passed(target_risk: float, delta: float, errors: int = 0) -> int:
    """The fewest passed images that certify ``target_risk`` when ``errors`` of them are wrong."""
    _check_level("target risk", target_risk)
    _check_level("delta", delta)
    m = max(errors + 1, math.ceil(math.log(delta) / math.log(1.0 - target_risk)))
    while risk_upper_bound(errors, m, delta) > target_risk:
        m = max(m + 1, int(m * 1.05))
    while m > errors + 1 and risk_upper_bound(errors, m - 1, delta) <= target_risk:
        m -= 1
    return m


# ----------------------------------------------------------------------------------------------- choices


def _sorted(confidence: Any) -> tuple[np.ndarray, np.ndarray]:
    conf = np.asarray(confidence, np.float64).reshape(-1)
    if conf.size == 0:
        raise CalibrationError("the sample is empty")
    if not np.all(np.isfinite(conf)):
        raise CalibrationError("the sample has confidences that are not finite numbers")
    order = np.argsort(-conf, kind="stable")
    return conf[order], order


def _cut(desc: np.ndarray, passed: int) -> float:
    """A float32 threshold that passes exactly the ``passed`` most confident of ``desc`` (sorted, most
    confident first, cut between two distinct values): the midpoint, or the upper value where float32
    cannot hold a number between them."""
    if passed >= desc.size:
        return float(np.float32(desc[-1] - FULL_COVERAGE_MARGIN))
    upper, lower = desc[passed - 1], desc[passed]
    threshold = np.float32((upper + lower) / 2)
    return float(threshold if threshold > np.float32(lower) else np.float32(upper))


def risk_curve(confidence: Any, wrong: Any) -> RiskCurve:
    """The selective risk at every cut between distinct confidences (and below the lowest one)."""
    desc, order = _sorted(confidence)
    wrong_sorted = np.asarray(wrong, bool).reshape(-1)[order]
    if wrong_sorted.size != desc.size:
        raise CalibrationError(f"{desc.size} confidences but {wrong_sorted.size} right/wrong answers")
    ends = np.flatnonzero(np.append(desc[1:] < desc[:-1], True)) + 1  # cut after each run of ties
    errors = np.cumsum(wrong_sorted)[ends - 1]
    thresholds = np.array([_cut(desc, int(j)) for j in ends])
    return RiskCurve(thresholds, ends.astype(np.int64), errors.astype(np.int64), int(desc.size))


def certify_risk(confidence: Any, wrong: Any, target_risk: float, delta: float) -> RiskGuarantee:
    """The threshold of largest coverage whose selective risk is at most ``target_risk`` with
    probability at least ``1 - delta`` (fixed-sequence scan from the strictest cut; module docstring).

    Raises:
        CalibrationError: the sample is too small, or no cut meets the target (the message says how many
            images would be needed where the sample's own curve suggests a number).
    """
    curve = risk_curve(confidence, wrong)
    start = minimum_passed(target_risk, delta, START_ERRORS)
    if curve.n < start:
        raise CalibrationError(
            f"the calibration part has {curve.n} images; certifying a risk of {target_risk:g} with "
            f"delta {delta:g} needs at least {start} passed images; "
            + _needed_text(curve, target_risk, delta)
        )
    bound = curve.bound(delta)
    tested = np.flatnonzero(curve.passed >= start)
    failed = tested[bound[tested] > target_risk]
    last = tested[tested < failed[0]] if failed.size else tested
    if last.size == 0:
        raise CalibrationError(
            f"no threshold meets a risk of {target_risk:g} with delta {delta:g}: among the {start} most "
            f"confident of {curve.n} images {int(curve.errors[tested[0]])} are wrong "
            f"(bound {bound[tested[0]]:.3f}); {_needed_text(curve, target_risk, delta)}"
        )
    i = int(last[-1])
    passed = int(curve.passed[i])
    return RiskGuarantee(
        threshold=float(curve.thresholds[i]),
        target_risk=target_risk,
        delta=delta,
        n=curve.n,
        passed=passed,
        errors=int(curve.errors[i]),
        bound=float(bound[i]),
        start=start,
        stopped_at=int(curve.passed[failed[0]]) if failed.size else None,
        pass_interval=order_statistic_interval(passed, curve.n, delta),
    )


def needed_images(curve: RiskCurve, target_risk: float, delta: float) -> int | None:
    """About how many images certify the target if the sample's risk-coverage curve held: at the largest
    coverage whose measured risk is at most :data:`PROJECTION_SHARE` of the target. None when no
    coverage of the sample is that accurate (more images of the same kind would not help)."""
    ok = np.flatnonzero(curve.risk <= PROJECTION_SHARE * target_risk)
    if ok.size == 0:
        return None
    i = int(ok[-1])
    risk, coverage = float(curve.risk[i]), float(curve.coverage[i])
    m = minimum_passed(target_risk, delta, 0)
    while risk_upper_bound(round(risk * m), m, delta) > target_risk:
        m = int(m * 1.1) + 1
    return math.ceil(m / coverage)


def _needed_text(curve: RiskCurve, target_risk: float, delta: float) -> str:
    needed = needed_images(curve, target_risk, delta)
    if needed is None:
        return (
            f"no coverage of this sample has a risk below {PROJECTION_SHARE * target_risk:g}, so more "
            "images like these would not help: choose a larger target risk"
        )
    return f"about {needed} independent labelled images like these would be needed to calibrate on"


def pass_rate_threshold(confidence: Any, target_pass_rate: float, delta: float) -> PassRateGuarantee:
    """The threshold that passes ``target_pass_rate`` of the sample, and the ``1 - delta`` interval of
    the pass rate it will have on new images from the same distribution.

    Raises:
        CalibrationError: the target rounds to no image or to every image of the sample.
    """
    _check_level("target pass rate", target_pass_rate)
    _check_level("delta", delta)
    desc, _ = _sorted(confidence)
    n = desc.size
    passed = round(target_pass_rate * n)
    if passed < 1:
        raise CalibrationError(
            f"a pass rate of {target_pass_rate:g} passes no image of {n}; "
            f"the sample needs at least {math.ceil(1 / target_pass_rate)} images"
        )
    while passed < n and desc[passed] == desc[passed - 1]:
        passed += 1  # ties pass together
    return PassRateGuarantee(
        threshold=_cut(desc, passed),
        target_pass_rate=target_pass_rate,
        delta=delta,
        n=n,
        passed=passed,
        interval=order_statistic_interval(passed, n, delta),
    )


def pass_rate_images(target_pass_rate: float, delta: float, half_width: float) -> int:
    """About how many images make the pass-rate interval at most ``+-half_width`` wide (normal
    approximation of the binomial)."""
    from scipy.stats import norm

    z = float(norm.ppf(1 - delta / 2))
    return math.ceil(z * z * target_pass_rate * (1 - target_pass_rate) / half_width**2)
