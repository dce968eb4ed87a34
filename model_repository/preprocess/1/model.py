"""Triton Python backend adapter for the preprocess step (the logic is fitguard.preprocess, tested alone).

IMAGE (encoded bytes) -> CLASSIFIER_INPUT uint8 [3, 224, 224], IQA_PATCHES uint8 [P, 3, 224, 224] (no
patches in shared quality mode).
Settings come from the config's ``parameters`` (written by ``fitguard export``) and are read once. A bad
image answers its own request with an error; the other requests of the batch still get their answers.
"""

from __future__ import annotations

import json

import triton_python_backend_utils as pb_utils

from fitguard.admission import open_gate
from fitguard.contract import CLASSIFIER_INPUT, IMAGE, IQA_PATCHES
from fitguard.manifest import verify_on_load
from fitguard.preprocess import BadImageError, Parameters, PreprocessSettings


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = Parameters.from_config(config)
        verify_on_load(args["model_repository"], enabled=params.bool("verify_manifest", True))
        self.settings = PreprocessSettings.from_parameters(params)
        self.refusals = None
        if params.bool("monitoring", False):
            from fitguard.monitoring import BadImageCounter

            self.refusals = BadImageCounter(pb_utils, version=str(args["model_version"]))
        self.invalid_arg = getattr(pb_utils.TritonError, "INVALID_ARG", None)
        self.unavailable = getattr(pb_utils.TritonError, "UNAVAILABLE", None)
        # Admission control (fitguard.admission): the monitor step releases what this step admits.
        self.gate = open_gate(
            args["model_repository"],
            limit=params.int("max_in_flight", 0),
            lease_ms=params.int("admission_lease_ms", 2000),
        )

    def _error(self, message: str, invalid_input: bool) -> pb_utils.InferenceResponse:
        if invalid_input and self.invalid_arg is not None:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, self.invalid_arg))
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(message))

    def _answer(self, request: pb_utils.InferenceRequest) -> pb_utils.InferenceResponse:
        images = pb_utils.get_input_tensor_by_name(request, IMAGE).as_numpy().reshape(-1)
        crops, patches = self.settings.prepare_batch([bytes(image) for image in images])
        outputs = [pb_utils.Tensor(CLASSIFIER_INPUT, crops)]
        if patches is not None:  # None in shared quality mode: the classifier's pass gives the features
            outputs.append(pb_utils.Tensor(IQA_PATCHES, patches))
        return pb_utils.InferenceResponse(output_tensors=outputs)

    def _refusal(self) -> pb_utils.InferenceResponse:
        message = self.gate.refusal()
        if self.unavailable is not None:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, self.unavailable))
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(message))

    def execute(self, requests: list) -> list:
        responses = []
        sizes = [0] * len(requests)
        admitted = [True] * len(requests)
        if self.gate is not None:  # refuse before decoding, under one lock a batch: refusals stay cheap
            sizes = [int(pb_utils.get_input_tensor_by_name(r, IMAGE).as_numpy().size) for r in requests]
            admitted = self.gate.admit_batch(sizes)
        for request, rows, admit in zip(requests, sizes, admitted, strict=True):
            if not admit:
                responses.append(self._refusal())
                continue
            try:
                responses.append(self._answer(request))
                rows = 0  # answered: the monitor step releases its slots
            except BadImageError as exc:
                if self.refusals is not None:
                    self.refusals.add()
                responses.append(self._error(f"bad image: {exc}", invalid_input=True))
            except Exception as exc:  # never raise out of execute: it would fail the whole batch
                responses.append(self._error(f"preprocess failed: {exc.__class__.__name__}: {exc}", False))
            if rows:  # refused here as a bad image: it never reaches the step that releases
                self.gate.release(rows)
        return responses

    def finalize(self) -> None:
        if self.gate is not None:
            self.gate.close()
