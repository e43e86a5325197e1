"""The IIC method end to end on CPU: one step, gradients, head alternation, a short fit, inference, state."""

from __future__ import annotations

import pytest
import torch

from training.errors import ConfigError, DataError
from training.methods import FitContext, available_methods, build_method
from training.methods.iic import IIC, IICConfig

SMALL = {"n_clusters": 2, "over_clusters": 4, "width": 0.125, "half_T": 2, "channels": 1}


def _ctx(epoch: int = 0, step: int = 0, reduce=None) -> FitContext:
    ctx = FitContext(device=torch.device("cpu"), epoch=epoch, step=step)
    if reduce is not None:
        ctx.all_reduce_sum = reduce
    return ctx


def two_textures(b: int = 4, size: int = 24, seed: int = 0) -> torch.Tensor:
    """Grey images: a bright striped region and a dark smooth region, split at a random column."""
    g = torch.Generator().manual_seed(seed)
    x = torch.arange(size).float()
    stripes = 0.7 + 0.25 * torch.sin(x * 2.0).view(1, -1).expand(size, size)
    images = []
    for _ in range(b):
        cut = int(torch.randint(size // 4, 3 * size // 4, (1,), generator=g))
        img = torch.full((size, size), 0.2) + 0.02 * torch.rand(size, size, generator=g)
        img[:, :cut] = stripes[:, :cut]
        images.append(img if torch.rand(1, generator=g) < 0.5 else img.t())
    return torch.stack(images).unsqueeze(1).clamp(0, 1)  # (B, 1, H, W)


def test_registered_and_built_from_a_dict():
    assert "iic" in available_methods()
    method = build_method("iic", SMALL)
    assert isinstance(method, IIC) and isinstance(method.config, IICConfig)
    assert method.eval_heads() == {"main": 2, "over": 4}
    with pytest.raises(ConfigError, match="no field"):
        build_method("iic", {"n_clusterz": 3})


@pytest.mark.parametrize("epoch,trained,idle", [(0, "head_A", "head_B"), (1, "head_B", "head_A")])
def test_one_step_finite_loss_and_gradient_on_every_trainable_parameter(epoch, trained, idle):
    torch.manual_seed(0)
    method = build_method("iic", SMALL)
    out = method.training_step({"image": torch.rand(3, 1, 20, 20)}, _ctx(epoch=epoch))
    assert torch.isfinite(out["loss"]) and out["loss"].requires_grad
    out["loss"].backward()
    trainable = [(n, p) for n, p in method.named_parameters() if p.requires_grad]
    assert any(trained in n for n, _ in trainable) and not any(idle in n for n, _ in trainable)
    for name, p in trainable:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert out["head_B"] == float(trained == "head_B")
    assert all(isinstance(v, float) for k, v in out.items() if k != "loss")


def test_schedules_alternate_heads_as_documented():
    method = build_method("iic", SMALL)
    assert [method.active_heads(_ctx(epoch=e)) for e in range(3)] == [("A",), ("B",), ("A",)]
    method = build_method("iic", {**SMALL, "head_B_first": True, "head_schedule": "step"})
    assert [method.active_heads(_ctx(epoch=0, step=s)) for s in range(3)] == [("B",), ("A",), ("B",)]
    method = build_method("iic", {**SMALL, "head_schedule": "both", "num_sub_heads": 2})
    assert method.active_heads(_ctx()) == ("A", "B")
    out = method.training_step({"image": torch.rand(2, 1, 20, 20)}, _ctx())
    out["loss"].backward()
    assert all(p.grad is not None for p in method.parameters())  # both heads, both sub-heads, the trunk
    assert out["loss"].item() == pytest.approx(out["loss_A"] + out["loss_B"], rel=1e-5)
    assert len(method.configure_optimizer().param_groups[0]["params"]) == len(list(method.parameters()))


def test_joint_goes_through_the_all_reduce_hook():
    calls = []

    def reduce(t: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(t.shape))
        return t

    method = build_method("iic", {**SMALL, "num_sub_heads": 2})
    method.training_step({"image": torch.rand(2, 1, 20, 20)}, _ctx(reduce=reduce))
    assert calls == [(25, 4, 4), (25, 4, 4)]  # (2T+1)^2 joints of head A (k=4), once per sub-head


def test_a_short_fit_on_two_textures_lowers_the_loss():
    torch.manual_seed(0)
    method = build_method("iic", {**SMALL, "lr": 1e-2, "head_schedule": "epoch", "jitter_brightness": 0.1,
                                  "jitter_contrast": 0.1})
    opt = method.configure_optimizer()
    images = two_textures(b=6, size=24)
    losses = []
    for step in range(15):
        out = method.training_step({"image": images}, _ctx(epoch=1, step=step))  # head B, k=2
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.05, losses
    assert losses[-1] < -0.05  # clearly positive MI (-log 2 = -0.69 is the best possible)


def test_inference_net_probabilities_at_input_resolution_and_predict():
    torch.manual_seed(0)
    method = build_method("iic", {**SMALL, "num_sub_heads": 2, "input": {"mean": (0.44,), "std": (0.2,)}}).eval()
    x = torch.rand(2, 1, 22, 26)
    net = method.inference_net("main")
    with torch.no_grad():
        probs = net(x)
        direct = method.net(method.adapter(x), head="B")
    assert probs.shape == (2, 2, 22, 26) and probs.dtype == torch.float32
    assert torch.allclose(probs.sum(1), torch.ones(2, 22, 26), atol=1e-5)
    assert torch.allclose(probs, direct[0], atol=1e-6)
    assert torch.equal(method.predict(x), probs.argmax(1))
    method.select_sub_head("main", 1)
    with torch.no_grad():
        assert torch.allclose(method.inference_net("main")(x), direct[1], atol=1e-6)
    assert method.inference_net("over")(x).shape == (2, 4, 22, 26)
    assert method.inference_net("main").trunk is method.net.trunk  # shares weights
    with pytest.raises(ConfigError, match="unknown head"):
        method.inference_net("aux")


def test_input_spec_and_extra_state_round_trip():
    method = build_method("iic", {**SMALL, "channels": 3, "input": {"sobel": "append", "native_size": 128},
                                  "num_sub_heads": 3})
    spec = method.input_spec()
    assert (spec.channels, spec.color_order, spec.sobel, spec.stride, spec.min_size) == (3, "rgb", True, 2, 10)
    assert spec.native_size == (128, 128) and spec.mean == (0.0, 0.0, 0.0) and spec.std == (1.0, 1.0, 1.0)
    method.training_step({"image": torch.rand(2, 3, 20, 20)}, _ctx(epoch=0))
    method.select_sub_head("main", 2)
    state = method.extra_state()
    assert state == {"steps_per_head": {"A": 1, "B": 0}, "sub_head": {"main": 2, "over": 0}}
    other = build_method("iic", {**SMALL, "channels": 3, "num_sub_heads": 3})
    other.load_extra_state(state)
    assert other.extra_state() == state


def test_same_global_seed_gives_the_same_step():
    method = build_method("iic", {**SMALL, "use_random_affine": True})
    x = torch.rand(2, 1, 20, 20)
    losses = []
    for _ in range(2):
        torch.manual_seed(5)
        losses.append(method.training_step({"image": x}, _ctx()).get("loss").item())
    assert losses[0] == losses[1]


def test_label_mask_excludes_ignored_pixels():
    torch.manual_seed(0)
    method = build_method("iic", {**SMALL, "use_label_mask": True})
    label = torch.full((2, 20, 20), 255, dtype=torch.int64)
    label[:, 5:9, 5:9] = 1
    out = method.training_step({"image": torch.rand(2, 1, 20, 20), "label": label}, _ctx())
    assert torch.isfinite(out["loss"])
    assert out["skipped_shifts"] == 0  # T=2 < 4: every displacement overlaps the 4x4 patch
    with pytest.raises(ConfigError, match="no 'label'"):
        method.training_step({"image": torch.rand(2, 1, 20, 20)}, _ctx())


def test_bad_config_and_batches_raise_clear_errors():
    with pytest.raises(ConfigError, match="sobel"):
        build_method("iic", {"input": {"sobel": "both"}})
    with pytest.raises(ConfigError, match="mean needs 3"):
        build_method("iic", {"channels": 3, "input": {"mean": (0.5,)}})
    with pytest.raises(ConfigError, match="head_schedule"):
        build_method("iic", {"head_schedule": "sometimes"})
    method = build_method("iic", SMALL)
    with pytest.raises(DataError, match="has 3 channels, IIC is configured for 1"):
        method.training_step({"image": torch.rand(2, 3, 20, 20)}, _ctx())
    with pytest.raises(ConfigError, match="at least 10"):
        method.training_step({"image": torch.rand(2, 1, 8, 20)}, _ctx())


@pytest.mark.parametrize("name", ["iic_cocostuff3", "iic_cocostuff15", "iic_potsdam3", "iic_potsdam6",
                                  "iic_scratch_cpu"])
def test_presets_build_and_match_their_paper_rows(name):
    import yaml

    from tests.conftest import ROOT

    preset = yaml.safe_load((ROOT / "training" / "presets" / f"{name}.yaml").read_text())
    method = build_method(preset["method"], preset["method_config"])
    c = method.config
    assert preset["data"]["train"]["crop"] == c.input.native_size and preset["data"]["train"]["channels"] == c.channels
    paper = {"iic_cocostuff3": (3, 15, 1.5, 10, 1e-4, 120), "iic_cocostuff15": (15, 45, 1.0, 10, 1e-4, 60),
             "iic_potsdam3": (3, 24, 1.5, 10, 1e-5, 75), "iic_potsdam6": (6, 36, 1.0, 5, 1e-6, 60)}
    if name in paper:
        assert (c.n_clusters, c.over_clusters, c.lamb_B, c.half_T, c.lr, preset["train"]["batch_size"]) == paper[name]
        assert c.uncollapsed and c.width == 1.0 and c.num_sub_heads == 1 and not c.use_random_affine
        assert c.input.sobel == ("append" if "coco" in name else "off")
    else:
        assert method.input_spec().mean == (0.44,) and c.width < 1.0


def test_head_padding_0_leaves_no_uniform_ring_along_the_frame_border():
    # The official head pads by 1: a ring of zero logits, i.e. uniform probabilities, whose argmax is cluster 0 on
    # every frame border (issue 13 item 4's 1-pixel ring). head_padding 0 predicts the border from the features.
    torch.manual_seed(0)
    x = torch.rand(2, 1, 64, 64)
    for padding, uniform in ((1, True), (0, False)):
        method = build_method("iic", {**SMALL, "head_padding": padding}).eval()
        probs = method.inference_net()(x)  # (B, K, H, W)
        border = torch.cat([probs[..., 0, :], probs[..., -1, :], probs[..., :, 0], probs[..., :, -1]], dim=-1)
        assert torch.allclose(border, torch.full_like(border, 1 / probs.shape[1]), atol=1e-6) == uniform
    with pytest.raises(ConfigError, match="head_padding"):
        build_method("iic", {"head_padding": 2})
