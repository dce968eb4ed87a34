"""Triton Python backend adapter of a DALI repository's ``preprocess`` step (``fitguard export --preprocess
dali`` writes this file as ``preprocess/1/model.py``; the logic is :mod:`fitguard.dali_check`).

IMAGE (encoded bytes, the ensemble's contract) -> the outputs of the DALI pipeline (CLASSIFIER_INPUT, and
IQA_PATCHES in patch quality mode). Each image is checked from its header; a bad one answers its own
request with an error. Each good one goes to the batching DALI model as its own request, so Triton's
dynamic batcher merges the images of concurrent requests into one DALI call; an image whose call failed
(DALI fails every sample of a call for one bad one) is sent again alone to the non-batching twin, and only
the request whose image fails there too gets an error.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import triton_python_backend_utils as pb_utils

from fitguard.contract import DALI_PREPROCESS, DALI_PREPROCESS_SINGLE, IMAGE
from fitguard.dali_check import check_header, refusal
from fitguard.parameters import Parameters
from fitguard.preprocess import BadImageError, PreprocessSettings
from fitguard.steps import INVALID_ARG, bad_image_counter, error_response, failure_response, verify_manifest


class _Refused(Exception):
    def __init__(self, message: str, bad_image: bool) -> None:
        super().__init__(message)
        self.bad_image = bad_image


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = Parameters.from_config(config)
        verify_manifest(args, params)
        self.limits = PreprocessSettings.from_parameters(params).limits
        self.outputs = [t["name"] for t in config.get("output") or []]
        self.refusals = bad_image_counter(pb_utils, args, params)

    async def _call(self, model: str, data: bytes) -> pb_utils.InferenceResponse:
        tensor = pb_utils.Tensor(IMAGE, np.frombuffer(data, dtype=np.uint8)[None])
        request = pb_utils.InferenceRequest(
            model_name=model, requested_output_names=self.outputs, inputs=[tensor]
        )
        return await request.async_exec()

    async def _prepare(self, data: bytes) -> list[np.ndarray]:
        response = await self._call(DALI_PREPROCESS, data)
        if response.has_error():  # maybe a batch mate's fault: alone, only a bad image fails again
            response = await self._call(DALI_PREPROCESS_SINGLE, data)
        if response.has_error():
            raise _Refused(*refusal(response.error().message()))
        return [pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in self.outputs]

    async def _answer(self, request: pb_utils.InferenceRequest) -> pb_utils.InferenceResponse:
        images = [bytes(b) for b in pb_utils.get_input_tensor_by_name(request, IMAGE).as_numpy().reshape(-1)]
        try:
            for data in images:
                check_header(data, self.limits)
            # every image's call finishes before the answer; the first failure answers the request
            rows = await asyncio.gather(*(self._prepare(data) for data in images), return_exceptions=True)
            failed = next((r for r in rows if isinstance(r, BaseException)), None)
            if failed is not None:
                raise failed
        except (BadImageError, _Refused) as exc:
            bad = isinstance(exc, BadImageError) or exc.bad_image
            if bad and self.refusals is not None:
                self.refusals.add()
            message = f"bad image: {exc}" if isinstance(exc, BadImageError) else str(exc)
            return error_response(pb_utils, message, INVALID_ARG if bad else None)
        tensors = [
            pb_utils.Tensor(name, np.concatenate([row[i] for row in rows]))
            for i, name in enumerate(self.outputs)
        ]
        return pb_utils.InferenceResponse(output_tensors=tensors)

    async def execute(self, requests: list) -> list:
        answers = await asyncio.gather(*(self._answer(r) for r in requests), return_exceptions=True)
        # never raise out of execute: it would fail the whole batch
        return [
            a if not isinstance(a, BaseException) else failure_response(pb_utils, "preprocess", a)
            for a in answers
        ]
