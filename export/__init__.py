"""Export the classifier, the quality model and the detector to a verified Triton model repository.

Heavy modules load on first use, so importing this package needs no torch. The manifest check the
served steps run lives in the core (:mod:`fitguard.manifest`); its names are re-exported here.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "export_repository": "fitguard.export.repository",
    "source_repository": "fitguard.export.repository",
    "ParityError": "fitguard.export.verify",
    "ExportError": "fitguard.export.onnx_export",
    "verify_repository": "fitguard.manifest",
    "read_manifest": "fitguard.manifest",
    "RepositoryIntegrityError": "fitguard.manifest",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
