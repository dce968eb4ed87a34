"""A stand-in for Triton's DALI backend, as a Python-based backend named ``dali``.

The ``nvidia-pytriton`` wheel has no DALI backend. Triton maps ``backend: "dali"`` to
``<backend-dir>/dali/``, and, finding this ``model.py`` instead of ``libtriton_dali.so``, runs it in the
Python backend, so a DALI repository is served unchanged: ``<model>/<version>/model.dali`` (the serialized
pipeline) is deserialized with the config's ``max_batch_size`` and run with DALI's CPU operators.

It keeps the real backend's batch semantics, which is the point of serving it in tests: every request of
an ``execute`` call is fed into one pipeline run (inputs by ``external_source`` name, outputs in the
pipeline's order under the config's output names), and when the run fails every request of the call gets
the same error and the pipeline is rebuilt (dali_backend's ``dali_model_instance.cc``). A pipeline with
GPU operators cannot run here and fails the load with a message saying so.

This file runs inside the Python backend stub and imports only numpy, nvidia.dali and the backend utils.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

MODEL_FILE = "model.dali"
_THREADS = 2  # the real backend's default num_threads is 1 per instance; 2 keeps a CPU host responsive


def _model_path(args: dict, config: dict) -> str:
    name = config.get("default_model_filename") or MODEL_FILE
    if name.endswith(".py"):  # Triton may fill in the Python backend's default for a Python-based backend
        name = MODEL_FILE
    path = os.path.join(args["model_repository"], args["model_version"], name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"serialized DALI pipeline not found: {path}")
    return path


def _samples(array: np.ndarray, batching: bool) -> list[np.ndarray]:
    """One request's rows: each row of a batched input is one sample, as the real backend splits them."""
    if not batching:
        return [np.ascontiguousarray(array)]
    return [np.ascontiguousarray(row) for row in array]


def _reason(message: str) -> str:
    """The operator and what it encountered, from DALI's multi-line error (with or without traceback)."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    lines = [line for line in lines if "pipeline" not in line.lower() and not line.startswith("File ")]
    operator = next((line for line in lines if line.startswith("Error in")), None)
    rest = lines[lines.index(operator) + 1 :] if operator else lines
    rest = [line for line in rest if line != "encountered:" and not line.startswith(("shape =", "image ="))]
    head = operator.removesuffix(",").removesuffix(" encountered:") if operator else ""
    detail = "; ".join(line.rstrip(" :") for line in rest)
    return ": ".join(part for part in (head, detail) if part) or "unknown error"


def _as_arrays(tensor_list: Any) -> list[np.ndarray]:
    return [np.array(tensor_list[i]) for i in range(len(tensor_list))]


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.model_name: str = args["model_name"]
        self.batching = int(config.get("max_batch_size", 0)) > 0
        self.batch_size = max(1, int(config.get("max_batch_size", 0)))
        self.path = _model_path(args, config)
        self.input_names = [t["name"] for t in config.get("input") or []]
        self.output_names = [t["name"] for t in config.get("output") or []]
        self.output_dtypes = {
            t["name"]: pb_utils.triton_string_to_numpy(t["data_type"]) for t in config.get("output") or []
        }
        self._pipe: Any = None
        self._pipeline()  # a pipeline that cannot be built fails the load, as in the real backend
        pb_utils.Logger.log_info(
            f"dali stand-in backend: {args['model_instance_name']} loaded {self.path} on the CPU "
            f"(batch {self.batch_size}, inputs {self.input_names}, outputs {self.output_names})"
        )

    def _pipeline(self) -> Any:
        if self._pipe is None:
            from nvidia.dali import Pipeline

            try:
                pipe = Pipeline.deserialize(
                    filename=self.path, batch_size=self.batch_size, num_threads=_THREADS, device_id=None
                )
                pipe.build()
            except RuntimeError as exc:
                raise RuntimeError(
                    f"{self.model_name}: the DALI stand-in runs CPU pipelines only (export with "
                    f"--accelerator none to serve it here): {str(exc).splitlines()[0]}"
                ) from None
            self._pipe = pipe
        return self._pipe

    def _run(self, requests: list) -> list[list[np.ndarray]]:
        """One pipeline run over every request; per output, the samples in request order."""
        pipe = self._pipeline()
        for name in self.input_names:
            batch: list[np.ndarray] = []
            for request in requests:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is None:
                    raise ValueError(f"missing input '{name}'")
                batch.extend(_samples(tensor.as_numpy(), self.batching))
            pipe.feed_input(name, batch)
        outputs = pipe.run()
        if len(outputs) != len(self.output_names):
            raise ValueError(
                f"the pipeline has {len(outputs)} outputs, the config names {len(self.output_names)}"
            )
        return [_as_arrays(out) for out in outputs]

    def _responses(self, requests: list, outputs: list[list[np.ndarray]]) -> list:
        responses, start = [], 0
        for request in requests:
            rows = pb_utils.get_input_tensor_by_name(request, self.input_names[0]).as_numpy().shape[0]
            count = rows if self.batching else 1
            tensors = []
            for name, samples in zip(self.output_names, outputs, strict=True):
                part = samples[start : start + count]
                array = np.stack(part) if self.batching else part[0]
                tensors.append(pb_utils.Tensor(name, array.astype(self.output_dtypes[name], copy=False)))
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += count
        return responses

    def execute(self, requests: list) -> list:
        try:
            return self._responses(requests, self._run(requests))
        except Exception as exc:  # the real backend: one error, copied into every response of the call
            self._pipe = None  # DALI stops after an error: the next call rebuilds the pipeline
            message = _reason(str(exc)) if str(exc).strip() else type(exc).__name__
            # one error object per response: the backend frees each response's error on its own
            return [
                pb_utils.InferenceResponse(error=pb_utils.TritonError(f"DALI Backend error: {message}"))
                for _ in requests
            ]

    def finalize(self) -> None:
        self._pipe = None
