"""``Einsum("bdhw,kd->bkhw")`` with a constant float32 (K, D) matrix -> a 1x1 ``Conv``: the same products, faster.

PiCIE's centroid classifier (``training.losses.picie.cluster_logits``) exports as such an Einsum. onnxruntime's
CPU Einsum transposes its operands and runs a generic batched MatMul; a 1x1 Conv runs in its NCHWc kernels. PiCIE
at 256x1600 (features 64x400, D = 128, K = 27, one thread): the Einsum took 25-31 ms, and the int8 model's whole
run went from ~185 to ~160 ms with the Conv.

Export applies this to the final float32 / int8 graph, after quantization, so the classifier stays outside the
quantized region exactly as before (int8's "last weighted layer" is unchanged). Einsums on float16 tensors are
left alone (onnxruntime's CPU has no float16 Conv), as is every other equation.
"""

from __future__ import annotations

import logging

import onnx
from onnx import TensorProto, helper, numpy_helper

log = logging.getLogger(__name__)


def einsum_to_conv(model: onnx.ModelProto) -> int:
    """Rewrite, in place, every channel-contraction Einsum with a constant float32 matrix; returns how many."""
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    replaced: set[str] = set()
    count = 0
    for index, node in enumerate(g.node):
        weight = inits.get(node.input[1]) if node.op_type == "Einsum" and len(node.input) == 2 else None
        if weight is None or weight.data_type != TensorProto.FLOAT or not _is_channel_contraction(node):
            continue
        matrix = numpy_helper.to_array(weight)  # (K, D)
        name = f"{node.name or node.output[0]}_conv_weight"
        g.initializer.append(numpy_helper.from_array(matrix[:, :, None, None].copy(), name))  # (K, D, 1, 1)
        g.node[index].CopyFrom(helper.make_node("Conv", [node.input[0], name], list(node.output), name=node.name,
                                                kernel_shape=[1, 1]))
        replaced.add(weight.name)
        count += 1
    if count:
        _drop_unused(g, replaced)
        log.info("einsum -> conv: %d channel-contraction Einsum(s) became 1x1 convolutions", count)
    return count


def _is_channel_contraction(node: onnx.NodeProto) -> bool:
    """``a c h w , k c -> a k h w`` with distinct letters (any letters, spaces ignored)."""
    equation = next((a.s.decode() for a in node.attribute if a.name == "equation"), "").replace(" ", "")
    if equation.count("->") != 1:
        return False
    lhs, out = equation.split("->")
    operands = lhs.split(",")
    if len(operands) != 2 or len(operands[0]) != 4 or len(operands[1]) != 2 or len(set(operands[0])) != 4:
        return False
    (a, c, h, w), (k, c2) = operands
    return c2 == c and k not in operands[0] and out == a + k + h + w


def _drop_unused(g: onnx.GraphProto, names: set[str]) -> None:
    """Remove the initializers ``names`` that no node reads any more (the Einsums' matrices)."""
    used = {name for n in g.node for name in n.input} | {o.name for o in g.output}
    keep = [i for i in g.initializer if i.name in used or i.name not in names]
    del g.initializer[:]
    g.initializer.extend(keep)
