"""Export the classifier, the quality model and the detector to a verified Triton model repository.

Heavy modules load on first use, so :mod:`fitguard.export.manifest` stays importable where torch is not
installed (the preprocess backend verifies its repository with it).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "export_repository": "fitguard.export.repository",
    "source_repository": "fitguard.export.repository",
    "ParityError": "fitguard.export.verify",
    "ExportError": "fitguard.export.onnx_export",
    "verify_repository": "fitguard.export.manifest",
    "read_manifest": "fitguard.export.manifest",
    "RepositoryIntegrityError": "fitguard.export.manifest",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
