import pytest
import torch

from training.data.photometric import (
    PhotometricConfig,
    _hsv_to_rgb,
    _rgb_to_hsv,
    adjust_hue,
    gaussian_blur,
    photometric_augment,
)
from training.nets.input_adapter import InputAdapter
from training.nets.resnet import StateDictMismatchError, load_torchvision_state_dict, resnet18


def test_hsv_round_trip_and_full_turn_hue_is_identity():
    x = torch.rand(3, 3, 9, 11, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(_hsv_to_rgb(*_rgb_to_hsv(x)), x, atol=1e-5)
    assert torch.allclose(adjust_hue(x, torch.full((3,), 0.0)), x, atol=1e-5)
    shifted = adjust_hue(x, torch.full((3,), 1 / 3))  # a third of a turn maps R->G->B
    pure_red = torch.zeros(1, 3, 1, 1)
    pure_red[:, 0] = 1
    assert torch.allclose(adjust_hue(pure_red, torch.tensor([1 / 3])).flatten(), torch.tensor([0.0, 1.0, 0.0]),
                          atol=1e-5)
    assert not torch.allclose(shifted, x)


def test_blur_preserves_mean_and_zero_sigma_is_identity():
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    out = gaussian_blur(x, torch.tensor([0.0, 1.5]))
    assert torch.equal(out[0], x[0])
    assert out[1].std() < x[1].std()
    assert abs(float(out[1].mean() - x[1].mean())) < 0.02


def test_augment_is_reproducible_and_stays_in_range():
    x = torch.rand(4, 3, 16, 16)
    cfg = PhotometricConfig(p_grey=0.5, p_blur=0.5)
    a = photometric_augment(x, cfg, torch.Generator().manual_seed(5))
    b = photometric_augment(x, cfg, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
    assert not torch.allclose(a, x)
    grey = photometric_augment(x[:, :1], cfg, torch.Generator().manual_seed(5))
    assert grey.shape == (4, 1, 16, 16)


def test_input_adapter_channels_and_normalisation():
    x = torch.rand(2, 3, 8, 8)
    assert InputAdapter((0.5,) * 3, (0.25,) * 3, "append")(x).shape == (2, 5, 8, 8)
    assert InputAdapter((0.5,), (0.25,), "replace")(x[:, :1]).shape == (2, 2, 8, 8)
    out = InputAdapter((0.5,) * 3, (0.25,) * 3)(x)
    assert torch.allclose(out, (x - 0.5) / 0.25)
    with pytest.raises(ValueError, match="expected 3 input channels"):
        InputAdapter((0.5,) * 3, (0.25,) * 3)(x[:, :1])


def test_resnet18_strides_and_torchvision_layout():
    net = resnet18().eval()
    feats = net(torch.rand(1, 3, 64, 64))
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2)]
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["fc.weight"] = torch.zeros(1000, 512)  # torchvision's classifier is ignored
    load_torchvision_state_dict(resnet18(), state)
    cifar = resnet18(in_channels=1, stem="cifar")(torch.rand(1, 1, 32, 32))
    assert [f.shape[-1] for f in cifar] == [32, 16, 8, 4]
    del state["layer1.0.conv1.weight"]
    state["layer4.1.bn2.weight"] = torch.zeros(3)
    with pytest.raises(StateDictMismatchError, match=r"missing 1 keys.*shape mismatches"):
        load_torchvision_state_dict(resnet18(), state, source="weights.safetensors")
