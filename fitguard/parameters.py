"""The ``parameters {}`` of the repository's configs: every key, the default a served step assumes when a
key is absent, and the typed reader the steps use.

`fitguard export` writes these keys (``fitguard.export.configs``, ``fitguard.export.overload``,
``fitguard.export.calibrated``) and the served steps, the client and the calibration read them: each key and
each default is named here once. Triton stores every value as a string. Standard library only: the served
steps import it in installs without torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# The preprocess step's settings (fitguard.preprocess.PreprocessSettings); ``patches`` also on quality.
BACKBONE = "backbone"
QUALITY_FEATURES = "quality_features"
REDUCED_DECODE = "reduced_decode"
PATCHES = "patches"
RESIZE = "resize"
CROP = "crop"
INTERPOLATION = "interpolation"
MEAN = "mean"
STD = "std"
MAX_BYTES = "max_bytes"
MAX_PIXELS = "max_pixels"
MAX_SIDE = "max_side"
MAX_ASPECT = "max_aspect"
# Which implementation serves the preprocess step of a DALI repository (fitguard.export.dali).
STEP = "step"

# The entry step counts bad-image refusals, and the monitor step is served (`fitguard export --monitoring`).
MONITORING = "monitoring"
DEFAULT_MONITORING = False
# Check every file against manifest.json as a step loads (fitguard.manifest.verify_on_load).
VERIFY_MANIFEST = "verify_manifest"
DEFAULT_VERIFY_MANIFEST = True

# Admission control (fitguard.admission): the limit the entry step admits, the lease after which a slot
# that was never released expires. Both gating steps (preprocess, monitor) read the same two keys.
MAX_IN_FLIGHT = "max_in_flight"
DEFAULT_MAX_IN_FLIGHT = 0  # off
ADMISSION_LEASE_MS = "admission_lease_ms"
# The lease the default queue policy writes (2 x its 1000 ms timeout), also the lease of a policy without
# a queue timeout and of a hand-written config without the key. A short lease errs towards admitting one
# image too many while a slow one is still in flight; a long one lets a few lost images refuse every
# request until they expire (docs/operations.md, section 3).
DEFAULT_ADMISSION_LEASE_MS = 2000

# The monitor step: distinct top-1 classes with their own unfit counter, later ones count as "other".
MAX_CLASSES = "max_classes"
DEFAULT_MAX_CLASSES = 50

# The detector's threshold (the one its graph subtracts), which `fitguard calibrate` reads and rewrites.
THRESHOLD = "threshold"
# A calibration's record in the ensemble's config (written by fitguard.export.calibrated, read by the
# client): its id, the threshold it set and the guarantee it states. The detector's config names the id.
CALIBRATION_ID = "calibration_id"
CALIBRATION_THRESHOLD = "calibration_threshold"
CALIBRATION_GUARANTEE = "calibration_guarantee"

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def flag(value: bool) -> str:
    """A boolean as the configs write it (``true``/``false``)."""
    return str(value).lower()


class Parameters:
    """Typed read access to a Triton config's ``parameters {}`` block (all values are strings there)."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Parameters:
        """From the JSON model config the Python backend receives (``args["model_config"]``)."""
        return cls({k: str(v.get("string_value", "")) for k, v in (config.get("parameters") or {}).items()})

    def str(self, key: str, default: str | None = None) -> str:
        value = self._values.get(key, default)
        if value is None:
            raise KeyError(f"config parameter {key!r} is missing")
        return value

    def int(self, key: str, default: int | None = None) -> int:
        return int(self.str(key, None if default is None else str(default)))

    def float(self, key: str, default: float | None = None) -> float:
        return float(self.str(key, None if default is None else repr(default)))

    def bool(self, key: str, default: bool | None = None) -> bool:
        text = self.str(key, None if default is None else str(default)).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError(f"config parameter {key!r} is not a boolean: {text!r}")

    def floats(self, key: str, default: Sequence[float] | None = None) -> tuple[float, ...]:
        fallback = None if default is None else ",".join(repr(x) for x in default)
        return tuple(float(x) for x in self.str(key, fallback).split(","))

    def to_dict(self) -> dict[str, str]:
        return dict(self._values)
