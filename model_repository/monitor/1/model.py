"""Triton Python backend adapter for the monitor step (the metrics are fitguard.monitoring, tested there).

CLASS_ID, QUALITY, FIT, FIT_SCORE in -> the same tensors out, each batch counted once on /metrics. The deep
health check's canary (request id fitguard.contract.CANARY_REQUEST_ID) passes through uncounted.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from fitguard.contract import CANARY_REQUEST_ID, CLASS_ID, FIT, FIT_SCORE, QUALITY_SCORE
from fitguard.labels import repository_labels
from fitguard.monitoring import VerdictMetrics
from fitguard.parameters import DEFAULT_MAX_CLASSES, MAX_CLASSES, Parameters
from fitguard.steps import admission_control

_NAMES = (CLASS_ID, QUALITY_SCORE, FIT, FIT_SCORE)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        params = Parameters.from_config(json.loads(args["model_config"]))
        self.metrics = VerdictMetrics(
            pb_utils,
            version=str(args["model_version"]),
            # The repository's own classes (its ensemble's labels file): the names the clients see.
            class_names=repository_labels(Path(args["model_repository"]).parent),
            max_classes=params.int(MAX_CLASSES, DEFAULT_MAX_CLASSES),
        )
        # The last step gives back the admission slots the preprocess step took (fitguard.admission).
        self.admission = admission_control(args, params)

    def execute(self, requests: list) -> list:
        responses, columns, rows = [], {name: [] for name in _NAMES}, 0
        for request in requests:
            tensors = [pb_utils.get_input_tensor_by_name(request, name) for name in _NAMES]
            arrays = [t.as_numpy() for t in tensors]
            rows += len(arrays[0])
            if request.request_id() != CANARY_REQUEST_ID:
                for name, array in zip(_NAMES, arrays, strict=True):
                    columns[name].append(array)
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        if self.admission is not None:
            self.admission.release(rows)
        if not columns[CLASS_ID]:
            return responses
        try:  # counting must never cost a client its answer
            batch = {name: np.concatenate(parts) for name, parts in columns.items()}
            self.metrics.record(
                class_id=batch[CLASS_ID], quality=batch[QUALITY_SCORE], fit=batch[FIT], score=batch[FIT_SCORE]
            )
        except Exception as exc:  # noqa: BLE001 - logged, the verdicts still go back
            pb_utils.Logger.log_error(f"monitor: could not record metrics: {exc}")
        return responses

    def finalize(self) -> None:
        if self.admission is not None:
            self.admission.close()
