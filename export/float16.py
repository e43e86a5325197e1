"""float32 -> float16 ONNX conversion with float32 inputs/outputs kept: ``--precision fp16``.

TensorRT 11 removed the FP16 builder flag: a strongly typed network runs in the precisions the ONNX graph
states, so an fp16 engine needs an fp16 graph (NVIDIA's migration guide points to ModelOpt AutoCast; this is
the small pass our graphs need, written here so that export depends on nothing beyond ``onnx``). The same
graph runs on onnxruntime (CPU included) and TensorRT 10.

The pass, on a shape-inferred model:

* nodes are either converted (the default) or kept in float32: the contract tail (``usseg_tail_*``: ArgMax,
  Gather, the scores Einsum with its float32 initializer, so ``usseg calibrate`` rewrites the same initializers
  in any precision) and ops whose float16 form overflows or loses too much (:data:`KEEP_FLOAT32_OPS`: sums of
  squares such as PiCIE's L2 normalisation overflow float16's 65504 on ordinary feature magnitudes);
* float32 initializers and Constant values used only by converted nodes become float16; ``Cast(to=FLOAT)``
  in converted nodes becomes ``Cast(to=FLOAT16)`` (the uint8 input's first Cast);
* a ``Cast`` is inserted wherever a float tensor crosses between the two groups, and before every float
  graph output (``scores`` stays float32); inputs that ONNX requires in float32 (Resize ``scales``) stay so.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.errors import ExportError

log = logging.getLogger(__name__)

KEEP_FLOAT32_OPS = frozenset({"ReduceL2", "ReduceSumSquare", "ReduceLogSumExp", "LpNormalization",
                              "LayerNormalization", "GroupNormalization", "InstanceNormalization"})
KEEP_FLOAT32_PREFIXES = ("usseg_tail_",)
# (op_type, input index) whose type ONNX fixes to float32 whatever the data's type.
FLOAT32_INPUT_SLOTS = frozenset({("Resize", 2), ("Upsample", 1)})
FLOAT = TensorProto.FLOAT
HALF = TensorProto.FLOAT16


def convert_to_float16(model: onnx.ModelProto, *, keep_ops: frozenset[str] = KEEP_FLOAT32_OPS,
                       keep_prefixes: tuple[str, ...] = KEEP_FLOAT32_PREFIXES) -> onnx.ModelProto:
    """A float16 copy of ``model`` (see the module docstring); graph inputs and outputs keep their types."""
    model = _inferred(model)
    g = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in g.node for a in n.attribute):
        raise ExportError("float16 conversion does not handle control-flow subgraphs (If/Loop/Scan)")
    types = _float_types(model)
    keep = {n.name for n in g.node if n.op_type in keep_ops or n.name.startswith(keep_prefixes)}
    consumers = _consumers(g)
    half_inits = _convert_initializers(g, consumers, keep)
    produced_half = set(half_inits)
    for node in g.node:
        if node.name in keep:
            continue
        _convert_attributes(node)
        produced_half.update(o for o in node.output if types.get(o) == FLOAT)
    _insert_casts(g, keep, types, produced_half)
    _cast_outputs(g, produced_half)
    del g.value_info[:]
    converted = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    log.info("float16: %d of %d nodes converted, %d kept in float32", len(g.node) - len(keep), len(g.node),
             len(keep))
    return converted


def _inferred(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for node in copy.graph.node:  # names identify nodes below; exporters leave some empty
        if not node.name:
            node.name = f"node_{id(node)}"
    try:
        return onnx.shape_inference.infer_shapes(copy, strict_mode=True)
    except onnx.shape_inference.InferenceError as e:
        raise ExportError(f"float16 conversion needs ONNX shape inference, which fails on this model: {e}") from e


def _float_types(model: onnx.ModelProto) -> dict[str, int]:
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.output, *g.value_info]}
    types.update({i.name: i.data_type for i in g.initializer})
    for node in g.node:  # Constant outputs are not always in value_info
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    types[node.output[0]] = a.t.data_type
                elif a.name in ("value_float", "value_floats"):
                    types[node.output[0]] = FLOAT
    return types


def _consumers(g: onnx.GraphProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    out: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in g.node:
        for i, name in enumerate(node.input):
            if name:
                out.setdefault(name, []).append((node, i))
    return out


def _convert_initializers(g: onnx.GraphProto, consumers: dict, keep: set[str]) -> set[str]:
    """float32 initializers read only by converted nodes at float-typed slots become float16."""
    converted = set()
    for init in g.initializer:
        if init.data_type != FLOAT:
            continue
        uses = consumers.get(init.name, [])
        if not uses or any(n.name in keep or (n.op_type, i) in FLOAT32_INPUT_SLOTS for n, i in uses):
            continue
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
        converted.add(init.name)
    return converted


def _convert_attributes(node: onnx.NodeProto) -> None:
    """Attributes that fix an output type: Cast(to), Constant / ConstantOfShape values."""
    for a in node.attribute:
        if node.op_type == "Cast" and a.name == "to" and a.i == FLOAT:
            a.i = HALF
        elif node.op_type in ("Constant", "ConstantOfShape") and a.name == "value" and a.t.data_type == FLOAT:
            a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float16), a.t.name))
    if node.op_type == "Constant":
        for a in list(node.attribute):
            if a.name in ("value_float", "value_floats"):
                values = np.asarray(a.f if a.name == "value_float" else list(a.floats), np.float16)
                node.attribute.remove(a)
                node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(values)))


def _insert_casts(g: onnx.GraphProto, keep: set[str], types: dict[str, int], half: set[str]) -> None:
    """A Cast wherever a float tensor enters a node of the other precision (or a float32-only slot)."""
    new_nodes: list[onnx.NodeProto] = []
    casts: dict[tuple[str, int], str] = {}
    for node in g.node:
        for i, name in enumerate(node.input):
            if not name or types.get(name) != FLOAT:
                continue
            want = FLOAT if node.name in keep or (node.op_type, i) in FLOAT32_INPUT_SLOTS else HALF
            have = HALF if name in half else FLOAT
            if want == have:
                continue
            key = (name, want)
            if key not in casts:
                casts[key] = f"{name}_as_{'fp16' if want == HALF else 'fp32'}"
                new_nodes.append(helper.make_node("Cast", [name], [casts[key]], name=f"cast_{casts[key]}", to=want))
            node.input[i] = casts[key]
        new_nodes.append(node)
    del g.node[:]
    g.node.extend(_topological(new_nodes, {i.name for i in g.input} | {i.name for i in g.initializer}))


def _cast_outputs(g: onnx.GraphProto, half: set[str]) -> None:
    """Float graph outputs produced in float16 get a final Cast back to float32 under their own name."""
    for out in g.output:
        if out.name not in half:
            continue
        inner = f"{out.name}_fp16"
        for node in g.node:
            node.output[:] = [inner if o == out.name else o for o in node.output]
            node.input[:] = [inner if i == out.name else i for i in node.input]
        g.node.append(helper.make_node("Cast", [inner], [out.name], name=f"cast_{out.name}_to_fp32", to=FLOAT))


def _topological(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """Nodes ordered so each comes after its inputs' producers (Casts were placed before their consumers
    but may read tensors produced later in the original order)."""
    done = set(available) | {""}
    ordered, pending = [], list(nodes)
    while pending:
        ready = [n for n in pending if all(i in done for i in n.input)]
        if not ready:
            raise ExportError(f"float16 conversion left a cycle or a dangling input near {pending[0].name}")
        for n in ready:
            ordered.append(n)
            done.update(n.output)
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
    return ordered
