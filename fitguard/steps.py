"""What the served Python steps share (``model_repository/*/1/model.py``, ``export/dali_check_model.py``):
their error responses and what they set up from their config's ``parameters``: the manifest check, the
admission control and the bad-image counter.

``pb_utils`` is ``triton_python_backend_utils``, passed in so that tests can fake it. Each step keeps only
what is its own (decoding, the DALI calls, counting verdicts).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fitguard.admission import AdmissionControl, open_admission
from fitguard.manifest import verify_on_load
from fitguard.parameters import (
    ADMISSION_LEASE_MS,
    DEFAULT_ADMISSION_LEASE_MS,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MONITORING,
    DEFAULT_VERIFY_MANIFEST,
    MAX_IN_FLIGHT,
    MONITORING,
    VERIFY_MANIFEST,
    Parameters,
)

if TYPE_CHECKING:
    from fitguard.monitoring import BadImageCounter

# Triton's error codes for a bad input and for shed load (gRPC INVALID_ARGUMENT / HTTP 400, gRPC
# UNAVAILABLE / HTTP 503); a Python backend older than the codes answers with the plain error.
INVALID_ARG = "INVALID_ARG"
UNAVAILABLE = "UNAVAILABLE"


def error_response(pb_utils: Any, message: str, code: str | None = None) -> Any:
    """An ``InferenceResponse`` that answers one request with ``message`` (and the error ``code`` where
    this Triton has it): never raise out of ``execute``, it would fail every request of the batch."""
    value = getattr(pb_utils.TritonError, code, None) if code else None
    error = pb_utils.TritonError(message) if value is None else pb_utils.TritonError(message, value)
    return pb_utils.InferenceResponse(error=error)


def bad_image_response(pb_utils: Any, message: str) -> Any:
    """The answer to an image the step cannot judge (the client raises ``BadImage``)."""
    return error_response(pb_utils, message, INVALID_ARG)


def overload_response(pb_utils: Any, message: str) -> Any:
    """The answer to a request admission control refused (the client retries it)."""
    return error_response(pb_utils, message, UNAVAILABLE)


def failure_response(pb_utils: Any, step: str, exc: BaseException) -> Any:
    """The answer to a request the step failed on for any other reason."""
    return error_response(pb_utils, f"{step} failed: {exc.__class__.__name__}: {exc}")


def verify_manifest(args: Mapping[str, Any], params: Parameters) -> None:
    """The manifest check as the step loads, unless its config turns it off."""
    verify_on_load(args["model_repository"], enabled=params.bool(VERIFY_MANIFEST, DEFAULT_VERIFY_MANIFEST))


def admission_control(args: Mapping[str, Any], params: Parameters) -> AdmissionControl | None:
    """The admission control of the step's server (None where the config sets no limit)."""
    return open_admission(
        args["model_repository"],
        limit=params.int(MAX_IN_FLIGHT, DEFAULT_MAX_IN_FLIGHT),
        lease_ms=params.int(ADMISSION_LEASE_MS, DEFAULT_ADMISSION_LEASE_MS),
    )


def bad_image_counter(pb_utils: Any, args: Mapping[str, Any], params: Parameters) -> BadImageCounter | None:
    """The counter of refused images on ``/metrics`` (None where the config turns monitoring off)."""
    if not params.bool(MONITORING, DEFAULT_MONITORING):
        return None
    from fitguard.monitoring import BadImageCounter

    return BadImageCounter(pb_utils, version=str(args["model_version"]))
