"""Check a served model's metadata and config against the fitguard tensor contract, once, on connect."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fitguard import contract

from .calibration import Calibration, calibration_from_config
from .errors import ContractMismatch


@dataclass(frozen=True)
class ModelInfo:
    """What the server reported about the model on connect."""

    name: str
    versions: tuple[str, ...]
    platform: str
    max_batch_size: int
    calibration: Calibration = Calibration()
    num_classes: int = contract.NUM_CLASSES
    labelled: bool = False  # the ensemble offers PROBS with its labels file (the classification extension)

    @property
    def top_k(self) -> int:
        """K = min(5, N): the classes a verdict lists."""
        return contract.top_k(self.num_classes)


def _fmt(name: str, datatype: str, shape: list[int] | tuple[int, ...]) -> str:
    return f"{name} {datatype} [{','.join(str(d) for d in shape)}]"


def label_request(info: ModelInfo) -> dict[str, int]:
    """What a request asks beside the verdict: PROBS as the top-K labelled classes, where it is served."""
    return {"class_count": info.top_k} if info.labelled else {}


def _served_classes(metadata: Mapping[str, Any]) -> int | None:
    """N from the ensemble's PROBS output (None: a repository exported before PROBS was offered)."""
    probs = next((t for t in metadata.get("outputs", []) if t.get("name") == contract.PROBS), None)
    shape = [int(d) for d in probs.get("shape", [])] if probs else []
    return shape[-1] if shape and shape[-1] > 0 else None


def check_signature(metadata: Mapping[str, Any], config: Mapping[str, Any], url: str) -> ModelInfo:
    """Compare the model against ``contract.ENSEMBLE_INPUTS/OUTPUTS`` sized for the served classifier's N
    (read from the ensemble's ``PROBS``; ImageNet's when it has none).

    ``metadata`` and ``config`` are in the KServe v2 JSON form (shapes as ints, batch dimension
    included as -1 in metadata). Raises :class:`ContractMismatch` listing every difference.
    """
    name = str(metadata.get("name", "?"))
    served_classes = _served_classes(metadata)
    num_classes = served_classes or contract.NUM_CLASSES
    max_batch = int(config.get("max_batch_size", 0) or 0)
    problems: list[str] = []
    if max_batch < 1:
        problems.append("max_batch_size is 0 (the contract needs a leading batch dimension)")
    for kind, expected, served in (
        ("input", contract.ENSEMBLE_INPUTS, metadata.get("inputs", [])),
        ("output", contract.sized(contract.ENSEMBLE_OUTPUTS, num_classes), metadata.get("outputs", [])),
    ):
        by_name = {t["name"]: t for t in served}
        missing = []
        for tensor in expected:
            want_shape = [-1, *tensor.shape] if max_batch > 0 else list(tensor.shape)
            got = by_name.get(tensor.name)
            if got is None:
                missing.append(tensor.name)
                continue
            got_shape = [int(d) for d in got.get("shape", [])]
            if got["datatype"] != tensor.datatype or got_shape != want_shape:
                problems.append(
                    f"{kind} {_fmt(tensor.name, got['datatype'], got_shape)} should be "
                    f"{_fmt(tensor.name, tensor.datatype, want_shape)}"
                )
        if missing:
            problems.append(f"{kind}{'s' if len(missing) > 1 else ''} {', '.join(missing)} missing")
        if kind == "input":
            extra = sorted(set(by_name) - {t.name for t in expected})
            if extra:  # the client would not send them, so the server would refuse every request
                problems.append(f"unexpected input(s) {', '.join(extra)}")
    if any(
        t.get("name") == contract.IMAGE and t.get("datatype") == "UINT8" for t in metadata.get("inputs", [])
    ):
        # what `fitguard export --preprocess dali` wrote before its validating step kept the BYTES contract
        problems.append("this is a DALI repository of an earlier export: re-export it with this fitguard")
    if problems:
        served = "; ".join(
            f"{k}: "
            + ", ".join(_fmt(t["name"], t["datatype"], t.get("shape", [])) for t in metadata.get(k, []))
            for k in ("inputs", "outputs")
        )
        raise ContractMismatch(
            f"model {name!r} at {url} does not match the fitguard tensor contract: "
            + "; ".join(problems)
            + f". The server has {served}."
        )
    return ModelInfo(
        name=name,
        versions=tuple(str(v) for v in metadata.get("versions", [])),
        platform=str(metadata.get("platform", "")),
        max_batch_size=max_batch,
        calibration=calibration_from_config(config),
        num_classes=num_classes,
        labelled=served_classes is not None,
    )
