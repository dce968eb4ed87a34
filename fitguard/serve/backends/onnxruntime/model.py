"""ONNX Runtime as a Python-based Triton backend named ``onnxruntime``.

Triton maps ``platform: "onnxruntime_onnx"`` to the backend name ``onnxruntime`` and, finding
``<backend-dir>/onnxruntime/model.py`` instead of ``libtriton_onnxruntime.so``, runs this file in the
Python backend. So a repository written for the NGC container's native ONNX Runtime backend is served
unchanged: ``<model>/<version>/model.onnx`` (or ``default_model_filename``), tensor names, data types and
``reshape`` from the config, ``max_batch_size`` batching, and the native backend's tunables
(``parameters``: ``intra_op_thread_count``, ``inter_op_thread_count``, ``execution_mode``,
``enable_mem_arena``, ``enable_mem_pattern``; ``optimization.graph.level``; GPU accelerators).

This file runs inside the Python backend stub and imports only numpy, onnxruntime and the backend utils.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

# ONNX tensor type -> numpy dtype, as ORT reports them.
_ORT_DTYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
    "tensor(string)": np.object_,
}

# Config data type -> numpy dtype (for auto-complete, the reverse direction).
_TRITON_TYPES: dict[str, Any] = {
    "TYPE_BOOL": np.bool_,
    "TYPE_UINT8": np.uint8,
    "TYPE_UINT16": np.uint16,
    "TYPE_UINT32": np.uint32,
    "TYPE_UINT64": np.uint64,
    "TYPE_INT8": np.int8,
    "TYPE_INT16": np.int16,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
}

# Same meaning as the native backend's `optimization { graph { level } }`.
_GRAPH_LEVELS = {
    -1: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    1: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    2: ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}

_ACCELERATORS = {"tensorrt": "TensorrtExecutionProvider", "openvino": "OpenVINOExecutionProvider"}


def _parameters(config: dict) -> dict[str, str]:
    return {k: str(v.get("string_value", "")) for k, v in (config.get("parameters") or {}).items()}


def _as_bool(text: str) -> bool:
    if text.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if text.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected a boolean, got {text!r}")


def _session_options(config: dict) -> ort.SessionOptions:
    params = _parameters(config)
    so = ort.SessionOptions()
    level = int(((config.get("optimization") or {}).get("graph") or {}).get("level", 0))
    so.graph_optimization_level = _GRAPH_LEVELS.get(level, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    mode = int(params.get("execution_mode") or 0)
    if mode not in (0, 1):
        raise ValueError(f"execution_mode must be 0 or 1, got {mode}")
    so.execution_mode = ort.ExecutionMode.ORT_PARALLEL if mode else ort.ExecutionMode.ORT_SEQUENTIAL
    if int(params.get("intra_op_thread_count") or 0) > 0:
        so.intra_op_num_threads = int(params["intra_op_thread_count"])
    if int(params.get("inter_op_thread_count") or 0) > 0:
        so.inter_op_num_threads = int(params["inter_op_thread_count"])
    if params.get("enable_mem_arena"):
        so.enable_cpu_mem_arena = _as_bool(params["enable_mem_arena"])
    if params.get("enable_mem_pattern"):
        so.enable_mem_pattern = _as_bool(params["enable_mem_pattern"])
    return so


def _providers(config: dict, kind: str, device_id: int) -> list:
    available = set(ort.get_available_providers())
    accel = (config.get("optimization") or {}).get("execution_accelerators") or {}
    providers: list = []
    if kind == "GPU" and "CUDAExecutionProvider" in available:
        for acc in accel.get("gpu_execution_accelerator") or []:
            name = _ACCELERATORS.get(str(acc.get("name", "")).lower())
            if name in available:
                providers.append((name, {"device_id": device_id, **(acc.get("parameters") or {})}))
        providers.append(("CUDAExecutionProvider", {"device_id": device_id}))
    else:
        for acc in accel.get("cpu_execution_accelerator") or []:
            name = _ACCELERATORS.get(str(acc.get("name", "")).lower())
            if name in available:
                providers.append((name, dict(acc.get("parameters") or {})))
    providers.append("CPUExecutionProvider")
    return providers


def _model_path(args: dict, config: dict) -> str:
    name = config.get("default_model_filename") or "model.onnx"
    if name.endswith(".py"):  # Triton may fill in the Python backend's default for a Python-based backend
        name = "model.onnx"
    path = os.path.join(args["model_repository"], args["model_version"], name)
    if os.path.isdir(path):  # the native backend's directory form: model.onnx/model.onnx + external data
        path = os.path.join(path, "model.onnx")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ONNX model file not found: {path}")
    return path


class _Tensor:
    """A config tensor bound to the session: name, numpy dtype, and the shape ORT wants when reshaped."""

    __slots__ = ("name", "dtype", "reshape", "is_string", "optional")

    def __init__(self, spec: dict, ort_type: str) -> None:
        self.name: str = spec["name"]
        self.dtype = pb_utils.triton_string_to_numpy(spec["data_type"])
        self.is_string = spec["data_type"] == "TYPE_STRING"
        self.optional = bool(spec.get("optional", False))
        ort_dtype = _ORT_DTYPES.get(ort_type)
        if ort_dtype is None or np.dtype(ort_dtype) != np.dtype(self.dtype):
            raise ValueError(
                f"tensor '{self.name}' is {spec['data_type']} in the config but {ort_type} in the model"
            )
        reshape = spec.get("reshape")
        self.reshape: tuple[int, ...] | None = (
            tuple(int(d) for d in reshape.get("shape", [])) if reshape else None
        )


def _stub_model_path() -> str | None:
    """The ONNX file the stub was started for (its first argument), read from /proc: Triton hands the Python
    backend's auto_complete_config only the config, not the model's location."""
    try:
        with open("/proc/self/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return None
    for raw in args[1:3]:
        path = raw.decode(errors="replace")
        if os.path.isdir(path):
            path = os.path.join(path, "model.onnx")
        if path.endswith(".onnx") and os.path.isfile(path):
            return path
    return None


def _config_io(meta: Any, batching: bool) -> dict:
    triton_type = {np.dtype(v): k for k, v in _TRITON_TYPES.items()}[np.dtype(_ORT_DTYPES[meta.type])]
    dims = [d if isinstance(d, int) and d >= 0 else -1 for d in meta.shape]
    return {"name": meta.name, "data_type": triton_type, "dims": dims[1:] if batching else dims}


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(auto_complete_model_config: Any) -> Any:
        """Like the native backend: fill in inputs and outputs the config leaves out from the ONNX model."""
        config = auto_complete_model_config.as_dict()
        if config.get("input") and config.get("output"):
            return auto_complete_model_config
        path = _stub_model_path()
        if path is None:
            return auto_complete_model_config  # initialize() reports the missing file or inputs
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        batching = int(config.get("max_batch_size", 0)) > 0
        if not config.get("input"):
            for meta in session.get_inputs():
                auto_complete_model_config.add_input(_config_io(meta, batching))
        if not config.get("output"):
            for meta in session.get_outputs():
                auto_complete_model_config.add_output(_config_io(meta, batching))
        return auto_complete_model_config

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.model_name: str = args["model_name"]
        self.batching = int(config.get("max_batch_size", 0)) > 0
        path = _model_path(args, config)
        kind = args.get("model_instance_kind", "CPU")
        device_id = int(args.get("model_instance_device_id") or 0)
        options = _session_options(config)
        self.session = ort.InferenceSession(
            path, sess_options=options, providers=_providers(config, kind, device_id)
        )
        pb_utils.Logger.log_info(
            f"onnxruntime backend: {args['model_instance_name']} loaded {path} on "
            f"{','.join(self.session.get_providers())} (intra_op_threads={options.intra_op_num_threads}, "
            f"inter_op_threads={options.inter_op_num_threads}, "
            f"graph_optimization={options.graph_optimization_level.name}, "
            f"execution_mode={options.execution_mode.name})"
        )

        model_inputs = {i.name: i for i in self.session.get_inputs()}
        model_outputs = {o.name: o for o in self.session.get_outputs()}
        self.inputs: list[_Tensor] = []
        for spec in config.get("input") or []:
            if spec["name"] not in model_inputs:
                raise ValueError(
                    f"unexpected input '{spec['name']}' in the config; the model has {sorted(model_inputs)}"
                )
            self.inputs.append(_Tensor(spec, model_inputs[spec["name"]].type))
        missing = sorted(set(model_inputs) - {t.name for t in self.inputs})
        if missing:
            raise ValueError(f"model inputs {missing} are missing from the config")
        self.outputs: dict[str, _Tensor] = {}
        for spec in config.get("output") or []:
            if spec["name"] not in model_outputs:
                raise ValueError(
                    f"unexpected output '{spec['name']}' in the config; the model has {sorted(model_outputs)}"
                )
            self.outputs[spec["name"]] = _Tensor(spec, model_outputs[spec["name"]].type)
        self.output_names = list(self.outputs)
        self.output_dims = {
            spec["name"]: tuple(int(d) for d in spec.get("dims", [])) for spec in config.get("output") or []
        }

    # ----------------------------------------------------------------------------------------- serving

    def _feeds(self, request: Any) -> dict[str, np.ndarray]:
        feeds = {}
        for t in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, t.name)
            if tensor is None:
                if t.optional:
                    continue
                raise ValueError(f"missing input '{t.name}'")
            array = tensor.as_numpy()
            if t.reshape is not None:
                array = array.reshape((array.shape[0], *t.reshape) if self.batching else t.reshape)
            if t.is_string:  # Triton hands BYTES as bytes objects; ORT string tensors want str
                array = np.vectorize(
                    lambda b: b.decode("utf-8") if isinstance(b, bytes) else b, otypes=[object]
                )(array)
            feeds[t.name] = array
        return feeds

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        results = self.session.run(self.output_names, feeds)
        out = []
        for name, array in zip(self.output_names, results, strict=True):
            t = self.outputs[name]
            if array.dtype != t.dtype and not t.is_string:
                array = array.astype(t.dtype)
            if t.reshape is not None:  # model shape -> the dims the config promises
                dims = self.output_dims[name]
                array = array.reshape((array.shape[0], *dims) if self.batching else dims)
            out.append(array)
        return out

    def _response(self, arrays: list[np.ndarray]) -> Any:
        return pb_utils.InferenceResponse(
            output_tensors=[pb_utils.Tensor(n, a) for n, a in zip(self.output_names, arrays, strict=True)]
        )

    def _error(self, e: BaseException) -> Any:
        return pb_utils.InferenceResponse(
            error=pb_utils.TritonError(f"{self.model_name}: {type(e).__name__}: {e}")
        )

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        # Requests whose tensors agree on every dimension but the batch one run as one ORT call.
        groups: dict[tuple, list[tuple[int, dict[str, np.ndarray]]]] = {}
        for i, request in enumerate(requests):
            try:
                feeds = self._feeds(request)
            except Exception as e:  # a bad request must not fail its batch mates
                responses[i] = self._error(e)
                continue
            if len(requests) == 1 or not self.batching:
                key: tuple = (i,)
            else:
                key = tuple((name, a.shape[1:]) for name, a in feeds.items())
            groups.setdefault(key, []).append((i, feeds))

        for members in groups.values():
            if len(members) > 1:
                try:
                    self._run_merged(members, responses)
                    continue
                except Exception:
                    pass  # answer one by one below, so only the request at fault gets the error
            for i, feeds in members:
                try:
                    responses[i] = self._response(self._run(feeds))
                except Exception as e:
                    responses[i] = self._error(e)
        return responses

    def _run_merged(self, members: list[tuple[int, dict[str, np.ndarray]]], responses: list) -> None:
        sizes = [next(iter(feeds.values())).shape[0] for _, feeds in members]
        merged = {name: np.concatenate([feeds[name] for _, feeds in members]) for name in members[0][1]}
        outputs = self._run(merged)
        total = sum(sizes)
        if any(a.ndim == 0 or a.shape[0] != total for a in outputs):
            raise ValueError("an output has no batch dimension")
        start = 0
        for (i, _), size in zip(members, sizes, strict=True):
            responses[i] = self._response([a[start : start + size] for a in outputs])
            start += size

    def finalize(self) -> None:
        self.session = None
