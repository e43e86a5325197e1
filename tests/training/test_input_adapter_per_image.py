"""InputAdapter(per_image=True): per-frame standardisation, Sobel on the standardised frame, ONNX export."""

import numpy as np
import pytest
import torch

from training.nets.input_adapter import InputAdapter, sobel_xy, standardise_per_image


def test_each_frame_and_channel_gets_zero_mean_unit_std():
    torch.manual_seed(0)
    x = torch.rand(3, 2, 9, 7) * torch.tensor([0.2, 0.9]).view(1, 2, 1, 1) + 0.05
    z = standardise_per_image(x)
    assert torch.allclose(z.mean(dim=(2, 3)), torch.zeros(3, 2), atol=1e-6)
    assert torch.allclose(z.var(dim=(2, 3), unbiased=False), torch.ones(3, 2), atol=2e-3)  # eps floor


def test_invariant_to_exposure_gain_and_offset_and_flat_frames_stay_finite():
    torch.manual_seed(1)
    x = torch.rand(2, 1, 16, 16) * 0.5
    adapter = InputAdapter((0.44,), (0.2,), "append", per_image=True)
    brighter = adapter(0.3 * x + 0.4)  # another exposure of the same frame
    assert torch.allclose(adapter(x), brighter, atol=5e-3)  # up to the variance floor
    flat = adapter(torch.full((1, 1, 8, 8), 0.7))
    assert torch.isfinite(flat).all() and flat.abs().max() < 1e-3


def test_fixed_normalisation_unchanged_when_off_and_sobel_on_standardised_grey_when_on():
    torch.manual_seed(2)
    x = torch.rand(2, 1, 12, 12)
    off = InputAdapter((0.44,), (0.2,), "append")(x)
    assert torch.allclose(off[:, :1], (x - 0.44) / 0.2)
    assert torch.allclose(off[:, 1:], sobel_xy(x))
    on = InputAdapter((0.44,), (0.2,), "append", per_image=True)(x)
    z = standardise_per_image(x)
    assert torch.allclose(on[:, :1], z) and torch.allclose(on[:, 1:], sobel_xy(z), atol=1e-5)
    assert not torch.allclose(on[:, :1], off[:, :1], atol=1e-2)


def test_per_image_exports_to_onnx_and_matches_torch(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    adapter = InputAdapter((0.5,), (0.25,), "append", per_image=True).eval()
    x = torch.rand(2, 1, 24, 32)
    path = tmp_path / "adapter.onnx"
    torch.onnx.export(adapter, (x,), str(path), input_names=["x"], output_names=["y"], opset_version=17,
                      dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}}, dynamo=False)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "ReduceMean" in ops
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    other = torch.rand(1, 1, 40, 30)  # another batch and size through the dynamic axes
    for frame in (x, other):
        (out,) = session.run(None, {"x": frame.numpy()})
        np.testing.assert_allclose(out, adapter(frame).detach().numpy(), rtol=1e-4, atol=1e-4)
