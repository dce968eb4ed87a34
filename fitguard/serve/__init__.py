"""The embedded Triton server: the ``tritonserver`` binary from the ``nvidia-pytriton`` wheel, ready to serve
a model repository written for the NGC container (see :mod:`fitguard.serve.embedded`)."""

from fitguard.serve.embedded import (
    EmbeddedServer,
    EmbeddedServerError,
    InvalidRepositoryError,
    ModelLoadError,
    PortInUseError,
)

__all__ = [
    "EmbeddedServer",
    "InvalidRepositoryError",
    "ModelLoadError",
    "PortInUseError",
    "EmbeddedServerError",
]
