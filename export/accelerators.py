"""Where each model runs: instance groups and ONNX Runtime execution accelerators per deployment target.

``none`` serves on the CPU (the embedded server, CI). ``cuda`` puts the ONNX models on the GPU with the
native ONNX Runtime backend's CUDA provider. ``tensorrt-fp16`` adds the TensorRT execution accelerator
at FP16. The preprocess (Python) and the detector (ONNX-ML operators, CPU-only in ONNX Runtime) stay
on the CPU in every target.
"""

from __future__ import annotations

from typing import Any

from fitguard.contract import CLASSIFIER, DETECTOR, ENSEMBLE, MONITOR, QUALITY_MODEL

ACCELERATORS: tuple[str, ...] = ("none", "cuda", "tensorrt-fp16")
GPU_MODELS = (CLASSIFIER, QUALITY_MODEL)


def apply_accelerator(config: Any, accelerator: str = "none", instances: int = 1) -> None:
    """Set ``config``'s (a ``ModelConfig`` message) instance group and accelerator for a target, in place."""
    from tritonclient.grpc import model_config_pb2 as mc

    if accelerator not in ACCELERATORS:
        raise ValueError(f"unknown accelerator {accelerator!r}; choose from {', '.join(ACCELERATORS)}")
    if instances < 1:
        raise ValueError(f"instances must be >= 1, got {instances}")
    if config.name == ENSEMBLE:
        return  # an ensemble has no instances of its own
    on_gpu = accelerator != "none" and config.name in GPU_MODELS
    del config.instance_group[:]
    group = config.instance_group.add()
    group.kind = mc.ModelInstanceGroup.KIND_GPU if on_gpu else mc.ModelInstanceGroup.KIND_CPU
    # More preprocess instances keep a GPU fed; the tiny detector and the monitor need one.
    group.count = 1 if config.name in (DETECTOR, MONITOR) else instances
    config.optimization.ClearField("execution_accelerators")
    if accelerator == "tensorrt-fp16" and config.name in GPU_MODELS:
        trt = config.optimization.execution_accelerators.gpu_execution_accelerator.add()
        trt.name = "tensorrt"
        trt.parameters["precision_mode"] = "FP16"
    if not config.HasField("optimization") or config.optimization.ByteSize() == 0:
        config.ClearField("optimization")
