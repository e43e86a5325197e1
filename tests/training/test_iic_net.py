"""SegmentationNet10aTwoHead against the official network's outputs (iic_arch_segnet10a_twohead.npz), and the
Sobel input adapter against the official ``sobel_process`` (iic_sobel_process.npz)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.nets.input_adapter import InputAdapter, sobel_xy, to_grey
from training.nets.net10a import (
    Net10aInferenceNet,
    SegmentationNet10aTwoHead,
    min_input_size,
    trunk_output_size,
)


def fill_formula(module: torch.nn.Module) -> list[str]:
    """FIXTURES.md "Architecture fixtures": fill every float state entry, in state_dict order, by the formula."""
    keys = []
    i = 0
    with torch.no_grad():
        for key, t in module.state_dict().items():
            if not t.is_floating_point():
                continue
            n = t.numel()
            s = torch.sin(0.37 * torch.arange(n, dtype=torch.float64) + 1.3 * i)
            if key.endswith("running_var"):
                v = 1 + 0.5 * s.abs()
            elif key.endswith("running_mean"):
                v = 0.1 * s
            elif t.ndim <= 1 and key.endswith("weight"):
                v = 1 + 0.1 * s
            elif t.ndim <= 1:
                v = 0.1 * s
            else:
                v = s * np.sqrt(2.0 / (n / t.shape[0]))
            t.copy_(v.view(t.shape))
            keys.append(key)
            i += 1
    return keys


@pytest.fixture
def net_and_fixture(parity):
    d = parity("iic_arch_segnet10a_twohead")
    net = SegmentationNet10aTwoHead(int(d["in_channels"]), int(d["output_k_A"]), int(d["output_k_B"]),
                                    num_sub_heads=int(d["num_sub_heads"])).double()
    keys = fill_formula(net)
    return net, d, keys


def test_state_dict_maps_onto_the_official_keys_in_order(net_and_fixture):
    net, d, keys = net_and_fixture
    shapes = {k: ",".join(map(str, v.shape)) for k, v in net.state_dict().items()}
    assert keys == d["state_dict_keys"].tolist()  # identical names, identical order
    assert [shapes[k] for k in keys] == d["state_dict_shapes"].tolist()


def test_trunk_layers_match_the_official_description(net_and_fixture):
    net, d, _ = net_and_fixture
    assert [repr(m) for m in net.trunk.features] == d["trunk_layers"].tolist()


def test_eval_outputs_match_official(net_and_fixture):
    net, d, _ = net_and_fixture
    x = torch.tensor(d["x"])
    net.eval()
    with torch.no_grad():
        trunk = net.trunk(x)
        a = net(x, head="A")
        b = net(x, head="B")
        logits = net.head_B.logits(trunk)
    np.testing.assert_allclose(trunk.numpy(), d["expected_trunk_eval"], rtol=1e-10, atol=1e-12)
    assert len(a) == len(b) == 1
    np.testing.assert_allclose(a[0].numpy(), d["expected_head_A_eval"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(b[0].numpy(), d["expected_head_B_eval"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(logits.numpy(), d["expected_head_B_prelogits_eval"], rtol=1e-10, atol=1e-12)
    ring = torch.ones(6, 6, dtype=torch.bool)
    ring[1:-1, 1:-1] = False
    assert torch.equal(logits[..., ring], torch.zeros_like(logits[..., ring]))  # padding=1: uniform 1/K ring


def test_train_mode_batchnorm_matches_official(net_and_fixture):
    net, d, _ = net_and_fixture
    net.train()
    with torch.no_grad():
        b = net(torch.tensor(d["x"]), head="B")
    np.testing.assert_allclose(b[0].numpy(), d["expected_head_B_train"], rtol=1e-10, atol=1e-12)


def test_inference_net_equals_head_B_and_sums_to_one(net_and_fixture):
    net, d, _ = net_and_fixture
    net.eval()
    adapter = InputAdapter((0.0,) * 5, (1.0,) * 5).double()
    inference = Net10aInferenceNet(adapter, net.trunk, net.head_B.heads[0])
    with torch.no_grad():
        out = inference(torch.tensor(d["x"]))
    np.testing.assert_allclose(out.numpy(), d["expected_head_B_eval"], rtol=1e-10, atol=1e-12)
    assert torch.allclose(out.sum(1), torch.ones_like(out[:, 0]))


def test_sizes_width_and_sub_heads():
    assert trunk_output_size(128) == 60 and trunk_output_size(200) == 96
    assert min_input_size() == 10
    net = SegmentationNet10aTwoHead(3, 12, 4, num_sub_heads=2, width=0.25, track_running_stats=False)
    assert net.trunk.out_channels == 128
    out = net(torch.rand(2, 3, 22, 18), head="A")
    assert len(out) == 2 and out[0].shape == (2, 12, 22, 18)
    with pytest.raises(ValueError, match="at least 10x10"):
        net(torch.rand(1, 3, 8, 16))
    with pytest.raises(ValueError, match="head must be"):
        net(torch.rand(1, 3, 16, 16), head="C")
    assert not any(m.track_running_stats for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_init_is_kaiming_fan_in():
    torch.manual_seed(0)
    net = SegmentationNet10aTwoHead(5, 15, 3)
    w = net.trunk.features[16].weight.detach()  # 512 x 512 x 3 x 3
    assert float(w.std()) == pytest.approx(np.sqrt(2.0 / (512 * 9)), rel=0.02)
    assert torch.equal(net.trunk.features[17].weight, torch.ones(512))


# -- Sobel ------------------------------------------------------------------------------------------------------
def test_sobel_xy_matches_official_sobel_process(parity):
    d = parity("iic_sobel_process")
    rgbgrey = torch.tensor(d["imgs_rgbgrey"])
    edges = sobel_xy(rgbgrey[:, 3:])
    expected = d["expected_include_rgb"]
    np.testing.assert_allclose(edges.numpy(), expected[:, 3:], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(rgbgrey[:, :3].numpy(), expected[:, :3])
    np.testing.assert_allclose(sobel_xy(torch.tensor(d["imgs_grey"])).numpy(), d["expected_grey_only"],
                               rtol=1e-6, atol=1e-6)


def test_input_adapter_sobel_modes_match_official(parity):
    d = parity("iic_sobel_process")
    grey = torch.tensor(d["imgs_grey"])
    replace = InputAdapter((0.0,), (1.0,), sobel="replace")(grey)  # grey-only sobel_process
    np.testing.assert_allclose(replace.numpy(), d["expected_grey_only"], rtol=1e-6, atol=1e-6)
    append = InputAdapter((0.0,), (1.0,), sobel="append")(grey)
    np.testing.assert_allclose(append[:, 1:].numpy(), d["expected_grey_only"], rtol=1e-6, atol=1e-6)
    # RGB: the adapter makes the grey channel itself (cv2 weights) before the official Sobel
    rgb = torch.tensor(d["imgs_rgbgrey"])[:, :3]
    out = InputAdapter((0.0,) * 3, (1.0,) * 3, sobel="append")(rgb)
    assert torch.equal(out[:, :3], rgb)
    assert torch.allclose(out[:, 3:], sobel_xy(to_grey(rgb)))
    dx_by_hand = (to_grey(rgb)[0, 0, 2, 1] * 2 - to_grey(rgb)[0, 0, 2, 3] * 2 + to_grey(rgb)[0, 0, 1, 1]
                  - to_grey(rgb)[0, 0, 1, 3] + to_grey(rgb)[0, 0, 3, 1] - to_grey(rgb)[0, 0, 3, 3])
    assert float(out[0, 3, 2, 2]) == pytest.approx(float(dx_by_hand), rel=1e-5)
