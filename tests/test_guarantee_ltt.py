"""fitguard.guarantee.certify_risk against MAPIE's Learn then Test controller on the same samples.

Both run the fixed-sequence scan over the same thresholds, strictest first, from the same start, and both
test "the selective risk is above the target" with the exact binomial tail (MAPIE's Bentkus p-value for a
binary loss; its Hoeffding term is never the smaller one). They differ in one place (docs/calibration.md):
MAPIE counts the errors at a threshold as ``ceil(passed * risk)`` in floating point, which reads one error
too many where ``passed * (errors / passed)`` rounds above ``errors``; its p-value is then larger and its
scan can stop earlier. So on a sample without such a cut they choose the same threshold, and on any sample
MAPIE never passes more than ours, stopping at a cut where its count is off.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from mapie.risk_control import BinaryClassificationController, BinaryRisk, recall

from fitguard.guarantee import START_ERRORS, certify_risk, minimum_passed, risk_curve

# Selective risk: wrong answers among the passed ones (y = 1: the answer is right; a prediction of 1: passed).
SELECTIVE_RISK = BinaryRisk(
    risk_occurrence=lambda right, passed: passed.ravel() != right.ravel(),
    risk_condition=lambda right, passed: passed.ravel() == 1,
    higher_is_better=False,
)


def _sample(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Confidences and wrong answers whose error rate falls as the confidence rises, as a detector's do."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(400, 2500))
    conf = rng.normal(size=n)
    wrong = rng.random(n) < 1 / (1 + np.exp(3 * conf + rng.uniform(1, 3)))
    return conf, wrong


def _mapie_threshold(conf: np.ndarray, wrong: np.ndarray, sequence: np.ndarray, target: float, delta: float):
    controller = BinaryClassificationController(
        predict_function=lambda x: np.stack([1 - x, x], axis=1),  # column 1 is compared with the threshold
        risk=SELECTIVE_RISK,
        target_level=target,
        confidence_level=1 - delta,
        best_predict_param_choice=recall,  # the most right answers passed: the largest coverage
        list_predict_params=sequence,
        fwer_method="fixed_sequence",
    )
    with warnings.catch_warnings():
        # MAPIE warns that the sample's risk is not monotone over the thresholds: the fixed sequence is
        # still valid, it may only stop early, and it is the order ours uses.
        warnings.simplefilter("ignore", UserWarning)
        controller.calibrate(conf, (~wrong).astype(int))
    return controller.best_predict_param


@pytest.mark.parametrize(("target", "delta"), [(0.05, 0.1), (0.1, 0.05)])
def test_mapie_and_ours_choose_the_same_threshold(target: float, delta: float) -> None:
    same = 0
    for seed in range(12):
        conf, wrong = _sample(seed)
        curve = risk_curve(conf, wrong)
        ours = certify_risk(conf, wrong, target, delta)
        tested = curve.passed >= minimum_passed(target, delta, START_ERRORS)
        sequence = curve.thresholds[tested]  # the cuts ours tests, strictest first
        theirs = _mapie_threshold(conf, wrong, sequence, target, delta)
        errors, passed = curve.errors[tested], curve.passed[tested]
        miscounted = np.ceil(passed * (errors / passed)) > errors  # MAPIE's count, one error too many
        if theirs == ours.threshold:
            same += 1
            continue
        assert miscounted[sequence >= ours.threshold].any(), seed  # they differ only through a miscount
        assert theirs is None or theirs > ours.threshold, seed  # then MAPIE passes fewer, never more
        stop = np.flatnonzero(sequence < (np.inf if theirs is None else theirs))[0]
        assert miscounted[stop], seed  # MAPIE stopped where it read one error too many
    assert same >= 6  # the miscount changes the choice on a few samples only
