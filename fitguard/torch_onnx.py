"""A torch module -> an ONNX graph with named tensors and dynamic axes: what the export writes for the
server and what the build runs its forward passes on (:mod:`fitguard.feature_graph`).

Requires the ``[export]`` extra (torch, onnx).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import onnx

OPSET = 18


def torch_export(
    module: Any, example: Any, input_name: str, output_names: str | Sequence[str], dynamic: dict[int, str]
) -> onnx.ModelProto:
    """One module with one input to a graph with the given tensor names and dynamic axes of the input."""
    import torch

    if isinstance(output_names, str):
        output_names = (output_names,)

    dims = {axis: torch.export.Dim(name) for axis, name in dynamic.items()}
    program = torch.onnx.export(
        module.eval(),
        (example,),
        dynamo=True,
        input_names=[input_name],
        output_names=list(output_names),
        dynamic_shapes=(dims,),
        opset_version=OPSET,
        optimize=True,
        verbose=False,
    )
    model = program.model_proto
    # The dynamo exporter names dynamic dims after the torch symbols (s0, s1...): use readable names.
    symbols = {}
    for axis, name in dynamic.items():
        dim = model.graph.input[0].type.tensor_type.shape.dim[axis]
        symbols[dim.dim_param] = name
    for value in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in symbols:
                dim.dim_param = symbols[dim.dim_param]
    return model
