"""fitguard client SDK: send images to a fitguard server, get class and fit verdicts.

Needs only numpy, Pillow and tritonclient::

    from fitguard.client import FitClient, expand_paths

    with FitClient("localhost:8001") as client:
        verdicts = client.classify_many(expand_paths(["photos/"]))  # or bytes, PIL images, arrays
"""

from fitguard.preprocess import IMAGE_EXTENSIONS

from .aio import AsyncFitClient
from .calibration import Calibration, read_calibration
from .errors import (
    BadImage,
    ContractMismatch,
    FitguardError,
    ModelNotReady,
    Overloaded,
    ServerError,
    ServerUnavailable,
    Timeout,
)
from .images import ImageInput, expand_paths
from .retry import RetryPolicy
from .sdk import FitClient, Result
from .signature import ModelInfo
from .verdict import Failure, TopClass, Verdict

__all__ = [
    "AsyncFitClient",
    "BadImage",
    "Calibration",
    "ContractMismatch",
    "Failure",
    "FitClient",
    "FitguardError",
    "IMAGE_EXTENSIONS",
    "ImageInput",
    "ModelInfo",
    "ModelNotReady",
    "Result",
    "RetryPolicy",
    "ServerError",
    "Overloaded",
    "ServerUnavailable",
    "Timeout",
    "TopClass",
    "Verdict",
    "expand_paths",
    "read_calibration",
]
