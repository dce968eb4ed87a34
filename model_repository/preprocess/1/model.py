"""Triton Python backend adapter for the preprocess step (the logic is fitguard.preprocess, tested alone).

IMAGE (encoded bytes) -> CLASSIFIER_INPUT uint8 [3, 224, 224], IQA_PATCHES uint8 [P, 3, 224, 224] (no
patches in shared quality mode).
Settings come from the config's ``parameters`` (written by ``fitguard export``) and are read once. A bad
image answers its own request with an error; the other requests of the batch still get their answers.
"""

from __future__ import annotations

import json

import triton_python_backend_utils as pb_utils

from fitguard.contract import CLASSIFIER_INPUT, IMAGE, IQA_PATCHES
from fitguard.parameters import Parameters
from fitguard.preprocess import BadImageError, PreprocessSettings
from fitguard.steps import (
    admission_control,
    bad_image_counter,
    bad_image_response,
    failure_response,
    overload_response,
    verify_manifest,
)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = Parameters.from_config(config)
        verify_manifest(args, params)
        self.settings = PreprocessSettings.from_parameters(params)
        self.refusals = bad_image_counter(pb_utils, args, params)
        # Admission control (fitguard.admission): the monitor step releases what this step admits.
        self.admission = admission_control(args, params)

    def _answer(self, request: pb_utils.InferenceRequest) -> pb_utils.InferenceResponse:
        images = pb_utils.get_input_tensor_by_name(request, IMAGE).as_numpy().reshape(-1)
        crops, patches = self.settings.prepare_batch([bytes(image) for image in images])
        outputs = [pb_utils.Tensor(CLASSIFIER_INPUT, crops)]
        if patches is not None:  # None in shared quality mode: the classifier's pass gives the features
            outputs.append(pb_utils.Tensor(IQA_PATCHES, patches))
        return pb_utils.InferenceResponse(output_tensors=outputs)

    def execute(self, requests: list) -> list:
        responses = []
        sizes = [0] * len(requests)
        admitted = [True] * len(requests)
        if self.admission is not None:  # refuse before decoding, under one lock a batch: refusals stay cheap
            sizes = [int(pb_utils.get_input_tensor_by_name(r, IMAGE).as_numpy().size) for r in requests]
            admitted = self.admission.admit_batch(sizes)
        for request, rows, admit in zip(requests, sizes, admitted, strict=True):
            if not admit:
                responses.append(overload_response(pb_utils, self.admission.refusal()))
                continue
            try:
                responses.append(self._answer(request))
                rows = 0  # answered: the monitor step releases its slots
            except BadImageError as exc:
                if self.refusals is not None:
                    self.refusals.add()
                responses.append(bad_image_response(pb_utils, f"bad image: {exc}"))
            except Exception as exc:  # never raise out of execute: it would fail the whole batch
                responses.append(failure_response(pb_utils, "preprocess", exc))
            if rows:  # refused here as a bad image: it never reaches the step that releases
                self.admission.release(rows)
        return responses

    def finalize(self) -> None:
        if self.admission is not None:
            self.admission.close()
