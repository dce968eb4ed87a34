"""FLOPs of the served ONNX graphs, counted from the graphs themselves.

Counting the exported file (not the PyTorch module) measures what the server runs, whatever the
precision: a quantised graph has the same multiply-adds as its fp32 original. Like
``torch.utils.flop_counter.FlopCounterMode``, only matrix products count (Conv, Gemm, MatMul and their
integer / QLinear forms), one multiply-add = 2 FLOPs; element-wise work is left out.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

# op type -> (index of the data input, index of the weight input)
_CONV_OPS = {"Conv": (0, 1), "ConvInteger": (0, 1), "QLinearConv": (0, 3)}
_MATMUL_OPS = {"MatMul": (0, 1), "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3), "FusedMatMul": (0, 1)}


def _fixed_shapes(model: Any, batch: int, inner: int) -> None:
    """Give the graph inputs concrete shapes: dim 0 = ``batch``, other dynamic dims = ``inner``."""
    for inp in model.graph.input:
        dims = inp.type.tensor_type.shape.dim
        for i, d in enumerate(dims):
            if not d.HasField("dim_value"):
                d.Clear()
                d.dim_value = batch if i == 0 else inner
    # Stored intermediate shapes keep the symbolic batch; drop them so inference recomputes them.
    del model.graph.value_info[:]
    for out in model.graph.output:
        out.type.tensor_type.ClearField("shape")


def _shape_map(model: Any) -> dict[str, tuple[int, ...]]:
    # ONNX Runtime's symbolic inference folds computed pads/shapes (e.g. EfficientNet's "same" padding)
    # that onnx.shape_inference leaves unknown.
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    except Exception:
        import onnx

        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes: dict[str, tuple[int, ...]] = {}
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        t = vi.type.tensor_type
        if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
            shapes[vi.name] = tuple(d.dim_value for d in t.shape.dim)
    for init in g.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


def onnx_flops(path: str | Path, batch: int = 1, inner: int = 1) -> dict[str, Any]:
    """FLOPs of one forward pass of an ONNX file with the given batch (and inner dynamic size, e.g. P).

    Returns:
        ``{"flops": total, "by_op": {op_type: flops}, "uncounted": [op types with unknown shapes]}``.
    """
    import onnx

    model = onnx.load(str(path))
    _fixed_shapes(model, batch, inner)
    shapes = _shape_map(model)
    by_op: dict[str, int] = {}
    uncounted: set[str] = set()
    for node in model.graph.node:
        flops = None
        if node.op_type in _CONV_OPS:
            _, wi = _CONV_OPS[node.op_type]
            w, y = shapes.get(node.input[wi]), shapes.get(node.output[0])
            if w and y:
                # each output element: C_in/group * kH * kW multiply-adds (w = [C_out, C_in/group, kH, kW])
                flops = 2 * math.prod(y) * math.prod(w[1:])
        elif node.op_type == "Gemm":
            a, y = shapes.get(node.input[0]), shapes.get(node.output[0])
            trans_a = next((at.i for at in node.attribute if at.name == "transA"), 0)
            if a and y:
                k = a[0] if trans_a else a[1]
                flops = 2 * math.prod(y) * k
        elif node.op_type in _MATMUL_OPS:
            ai, _ = _MATMUL_OPS[node.op_type]
            a, y = shapes.get(node.input[ai]), shapes.get(node.output[0])
            if a and y:
                flops = 2 * math.prod(y) * a[-1]
        else:
            continue
        if flops is None:
            uncounted.add(node.op_type)
            continue
        by_op[node.op_type] = by_op.get(node.op_type, 0) + flops
    return {"flops": sum(by_op.values()), "by_op": by_op, "uncounted": sorted(uncounted)}


def torch_flops(module: Any, example: Any) -> int:
    """FLOPs of ``module(example)`` by ``torch.utils.flop_counter`` (cross-check of :func:`onnx_flops`)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        module(example)
    return int(counter.get_total_flops())


def pipeline_flops(classifier_onnx: str | Path, quality_onnx: str | Path, patches: int) -> dict[str, Any]:
    """FLOPs per image of the served pipeline: the classifier on the crop, the quality model on P patches."""
    cls = onnx_flops(classifier_onnx, batch=1)
    qual = onnx_flops(quality_onnx, batch=1, inner=patches)
    return {
        "classifier": cls["flops"],
        "quality": qual["flops"],
        "per_image": cls["flops"] + qual["flops"],
        "patches": patches,
        "uncounted_ops": sorted(set(cls["uncounted"]) | set(qual["uncounted"])),
    }
