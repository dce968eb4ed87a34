"""Which calibration a served ensemble answers with, read from its config.

``fitguard calibrate`` writes a new detector version with the calibrated threshold, pins the ensemble's
detector step to it and records the calibration in the ensemble's ``parameters``; the client reads both
from the config it fetches on connect. A repository never calibrated has neither: its detector answers
with the threshold it was exported with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fitguard import contract
from fitguard.parameters import CALIBRATION_GUARANTEE, CALIBRATION_ID, CALIBRATION_THRESHOLD


@dataclass(frozen=True)
class Calibration:
    """The calibration of the served detector.

    Attributes:
        id: the calibration's id (``cal-`` and 12 hex digits); None for the export's own threshold.
        detector_version: the detector version the ensemble pins; None where Triton's version policy
            chooses (an uncalibrated repository serves its only version).
        threshold: the calibrated threshold (``FIT_SCORE = confidence - threshold``).
        guarantee: what the calibration promises, in words.
    """

    id: str | None = None
    detector_version: str | None = None
    threshold: float | None = None
    guarantee: str | None = None

    @property
    def calibrated(self) -> bool:
        return self.id is not None


def _parameter(parameters: Mapping[str, Any], key: str) -> str | None:
    entry = parameters.get(key)
    if isinstance(entry, Mapping):  # KServe JSON form: {"string_value": "..."}
        entry = entry.get("string_value")
    return str(entry) if entry not in (None, "") else None


def calibration_from_config(config: Mapping[str, Any]) -> Calibration:
    """The calibration an ensemble config (KServe v2 JSON form, HTTP or gRPC) records."""
    parameters = config.get("parameters") or {}
    version = None
    for step in (config.get("ensemble_scheduling") or {}).get("step", []):
        if step.get("model_name") == contract.DETECTOR:
            pinned = int(step.get("model_version", -1) or -1)  # gRPC's JSON writes int64 as a string
            version = str(pinned) if pinned > 0 else None
    threshold = _parameter(parameters, CALIBRATION_THRESHOLD)
    return Calibration(
        id=_parameter(parameters, CALIBRATION_ID),
        detector_version=version,
        threshold=float(threshold) if threshold is not None else None,
        guarantee=_parameter(parameters, CALIBRATION_GUARANTEE),
    )


def read_calibration(
    url: str, protocol: str = "grpc", model: str = contract.ENSEMBLE, timeout: float = 30.0
) -> Calibration:
    """Ask a running server which calibration its ensemble ``model`` answers with.

    Raises:
        ServerUnavailable, Timeout, ModelNotReady, ServerError: as the client's other calls.
    """
    from .transport import Connection, open_transport

    transport = open_transport(Connection(url=url, protocol=protocol, timeout=timeout))  # type: ignore[arg-type]
    try:
        return calibration_from_config(transport.model_config(model))
    finally:
        transport.close()
