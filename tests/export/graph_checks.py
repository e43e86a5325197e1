"""Assertions on exported graphs shared by the export tests."""

from __future__ import annotations

import onnx
from onnx import numpy_helper

MASK_OPS = {"Where", "Less", "LessOrEqual", "Greater", "GreaterOrEqual"}  # how an attention mask would appear


def assert_plain(model: onnx.ModelProto) -> None:
    """No masked convolution (weights are constants, not weight x mask), no shift padding, no attention mask,
    no BatchNormalization."""
    ops = {n.op_type for n in model.graph.node}
    assert not ops & MASK_OPS, f"mask ops left: {ops & MASK_OPS}"
    assert "BatchNormalization" not in ops
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert not [name for name in inits if "mask" in name.lower()]
    assert all(n.input[1] in inits for n in model.graph.node if n.op_type == "Conv"), "a conv weight is computed"
    for pad in (n for n in model.graph.node if n.op_type == "Pad"):  # only channel padding (AC's residual)
        pads = inits[pad.input[1]].reshape(2, -1)  # (begin, end) x axes
        assert not pads[:, [0, *range(2, pads.shape[1])]].any(), f"spatial (shift) padding in {pad.name}: {pads}"
