"""InfoSeg: segmentation step, stop-gradient, the objective's wiring, training, inference and config contract."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from training.errors import ConfigError, DataError
from training.losses.infomax import fenchel_dual_loss, location_mi_estimate
from training.methods import FitContext, build_method
from training.methods.infoseg import InfoSeg, InfoSegConfig
from training.nets.infoseg_net import class_assignment

SMALL = {"n_clusters": 3, "channels": 1, "width": 8, "blocks_per_stage": [1, 1, 1, 1], "feature_dim": 16,
         "global_hidden": 32}
CTX = FitContext(device=torch.device("cpu"))


def _method(**overrides) -> InfoSeg:
    torch.manual_seed(0)
    return build_method("infoseg", {**SMALL, **overrides})


def _two_textures(n=8, size=32, seed=0) -> torch.Tensor:
    """Grey images split at a random column into vertical stripes and smooth flat grey, sides swapped at random."""
    g = torch.Generator().manual_seed(seed)
    cols = torch.arange(size).float()
    stripes = (0.5 + 0.4 * torch.sin(cols * math.pi / 2)).expand(size, size)
    images = []
    for _ in range(n):
        split = int(torch.randint(8, size - 8, (1,), generator=g))
        left = cols[None, :] < split
        if torch.rand(1, generator=g) < 0.5:
            left = ~left
        flat = 0.3 + 0.02 * torch.randn(size, size, generator=g)
        images.append(torch.where(left, stripes, flat))
    return torch.stack(images).unsqueeze(1).clamp(0, 1)  # (n, 1, size, size)


# -- segmentation step -----------------------------------------------------------------------------
def _random_lh(seed=0, b=3, c=5, k=4, p=6):
    g = torch.Generator().manual_seed(seed)
    local = torch.randn(b, c, p, generator=g, dtype=torch.float64, requires_grad=True)
    globals_ = torch.randn(b, k, c, generator=g, dtype=torch.float64, requires_grad=True)
    return local, globals_


def test_probabilities_sum_to_one_and_assigned_is_v_transpose_h():
    local, globals_ = _random_lh()
    tau = torch.tensor(0.7, dtype=torch.float64)
    probs, assigned = class_assignment(local, globals_, tau)
    assert torch.allclose(probs.sum(dim=1), torch.ones(3, 6, dtype=torch.float64), atol=1e-12)
    for b in range(3):
        for p in range(6):
            logits = tau * (globals_[b] @ local[b, :, p])  # (K,)
            assert torch.allclose(probs[b, :, p], logits.softmax(0), atol=1e-12)
            assert torch.allclose(assigned[b, :, p], probs[b, :, p] @ globals_[b], atol=1e-12)  # S = V^T H


def _grads(detach: bool):
    local, globals_ = _random_lh(seed=1)
    tau = torch.tensor(0.5, dtype=torch.float64)
    probs, assigned = class_assignment(local, globals_, tau, detach=detach)
    frozen = torch.einsum("bkp,bkc->bcp", probs.detach(), globals_)  # S with V as a constant
    g_full = torch.autograd.grad(location_mi_estimate(local, assigned), (local, globals_))
    g_frozen = torch.autograd.grad(location_mi_estimate(local, frozen), (local, globals_))
    return probs, g_full, g_frozen


def test_detached_v_passes_no_gradient_through_s():
    probs, g_full, g_frozen = _grads(detach=True)
    assert not probs.requires_grad
    for a, b in zip(g_full, g_frozen, strict=True):
        assert torch.allclose(a, b, atol=1e-14)
    probs, g_full, g_frozen = _grads(detach=False)  # no_detach: V's path adds to both gradients
    assert probs.requires_grad
    for a, b in zip(g_full, g_frozen, strict=True):
        assert not torch.allclose(a, b, atol=1e-6)


def test_method_loss_is_per_location_dim_jsd_plus_2ln2():
    method = _method(hflip_p=0.0).double()
    images = _two_textures(4).double()
    out = method.training_step({"image": images}, CTX)
    local, globals_ = method.net.features(images)
    local = local.flatten(2)
    _, assigned = class_assignment(local, globals_, method.net.tau())
    n_loc = local.shape[2]
    expected = sum(fenchel_dual_loss(local[:, :, p:p + 1], assigned[:, :, p:p + 1], "JSD") for p in range(n_loc))
    assert abs(float(out["loss"].detach()) - (float(expected.detach()) / n_loc + 2 * math.log(2))) < 1e-12
    assert abs(out["mi_estimate"] - (2 * math.log(2) - float(out["loss"].detach()))) < 1e-12


# -- training ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides", [
    {},
    {"no_detach": True, "tau": "learnable", "negatives": "batch+classes"},
    {"local_block": "B", "global_block": "C", "tau": 1.0},
    {"channels": 3, "input": {"sobel": "append"}, "measure": "GAN"},
])
def test_one_step_is_finite_and_reaches_every_parameter(overrides):
    method = _method(**overrides)
    images = _two_textures(4).expand(-1, method.config.channels, -1, -1)
    out = method.training_step({"image": images, "index": torch.arange(4)}, CTX)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    missing = [n for n, p in method.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert missing == []


def test_a_few_steps_raise_the_estimate_on_two_textures():
    method = _method(hflip_p=0.0)
    images = {"image": _two_textures(8)}
    opt = method.configure_optimizer()
    for group in opt.param_groups:
        group["lr"] = 2e-3
    before = method.training_step(images, CTX)["mi_estimate"]
    for _ in range(5):
        opt.zero_grad()
        method.training_step(images, CTX)["loss"].backward()
        opt.step()
    after = method.training_step(images, CTX)["mi_estimate"]
    assert after > before + 0.2


def test_flip_draws_from_the_global_rng_and_flips_the_images():
    images = {"image": _two_textures(4)}
    method = _method(hflip_p=1.0)
    flipped = method.training_step(images, CTX)["loss"]
    plain = _method(hflip_p=0.0).training_step({"image": images["image"].flip(-1)}, CTX)["loss"]
    assert torch.allclose(flipped, plain, atol=1e-6)
    half = _method(hflip_p=0.5)
    torch.manual_seed(7)
    a = half.training_step(images, CTX)["loss"]
    torch.manual_seed(7)
    b = half.training_step(images, CTX)["loss"]
    assert torch.equal(a, b)


def test_iic_train_mask_uses_labelled_locations_only():
    method = _method(hflip_p=0.0, iic_train_mask=True)
    images = _two_textures(4)
    all_labelled = torch.zeros(4, 32, 32, dtype=torch.int64)
    masked = all_labelled.clone()
    masked[:, :, 16:] = 255
    plain = _method(hflip_p=0.0).training_step({"image": images}, CTX)["loss"]
    assert torch.allclose(method.training_step({"image": images, "label": all_labelled}, CTX)["loss"], plain)
    assert not torch.allclose(method.training_step({"image": images, "label": masked}, CTX)["loss"], plain)
    with pytest.raises(DataError, match="needs batch\\['label'\\]"):
        method.training_step({"image": images}, CTX)


def test_gathered_negatives_use_the_other_ranks_maps():
    method = _method(hflip_p=0.0, gather_negatives=True)
    images = _two_textures(3)
    other = torch.randn(3, 16, 64, dtype=torch.float32)  # rank 0's S, (B, C_f, P) on the 8x8 grid
    ctx = FitContext(device=torch.device("cpu"), rank=1, world_size=2,
                     all_reduce_sum=lambda t: t + torch.cat([other, torch.zeros_like(other)]))
    loss = method.training_step({"image": images}, ctx)["loss"]
    local, globals_ = method.net.features(images)
    _, assigned = class_assignment(local.flatten(2), globals_, method.net.tau())
    expected = 2 * math.log(2) - location_mi_estimate(local.flatten(2), torch.cat([other, assigned]), offset=3)
    assert torch.allclose(loss, expected, atol=1e-5)


# -- inference and contract ------------------------------------------------------------------------
def test_inference_net_upsamples_v_and_predict_is_its_argmax():
    method = _method().eval()
    images = _two_textures(2, size=40)
    probs = method.inference_net()(images)
    assert probs.shape == (2, 3, 40, 40)
    assert torch.allclose(probs.sum(dim=1), torch.ones(2, 40, 40), atol=1e-5)
    with torch.no_grad():
        local, globals_ = method.net.features(images)
        v, _ = class_assignment(local.flatten(2), globals_, method.net.tau())
    expected = F.interpolate(v.unflatten(2, local.shape[2:]), size=(40, 40), mode="bilinear", align_corners=False)
    assert torch.allclose(probs, expected, atol=1e-6)
    assert torch.equal(method.predict(images), probs.argmax(dim=1))
    assert method.eval_heads() == {"main": 3}


def test_input_spec_follows_the_config():
    spec = _method(channels=3, input={"sobel": "append", "native_size": 128}).input_spec()
    assert (spec.channels, spec.color_order, spec.sobel, spec.stride, spec.native_size) == (3, "rgb", True, 8,
                                                                                             (128, 128))
    assert spec.mean == (0.0,) * 3 and spec.std == (1.0,) * 3
    assert _method(channels=4, global_block="C").input_spec().stride == 4
    assert _method().input_spec().color_order == "gray"


@pytest.mark.parametrize(("overrides", "match"), [
    ({"tau": "learnable"}, "needs no_detach=True"),
    ({"tau": "big"}, "must be 'inv_sqrt', 'learnable' or a number"),
    ({"tau": -1.0}, "must be positive"),
    ({"local_block": "E"}, "local_block must be one of"),
    ({"negatives": "all"}, "negatives must be"),
    ({"channels": 2}, "channels must be 1"),
    ({"input": {"mean": [0.5, 0.5]}}, "input.mean needs 1 values"),
    ({"blocks_per_stage": [2, 2]}, "needs 4 positive counts"),
    ({"heads": 2}, "has no field"),
])
def test_bad_config_is_a_config_error(overrides, match):
    with pytest.raises(ConfigError, match=match):
        build_method("infoseg", {**SMALL, **overrides})


def test_bad_batches_are_named():
    method = _method()
    with pytest.raises(ConfigError, match="batch_size >= 2"):
        method.training_step({"image": torch.rand(1, 1, 32, 32)}, CTX)
    with pytest.raises(DataError, match="has 3 channels"):
        method.training_step({"image": torch.rand(2, 3, 32, 32)}, CTX)
    with pytest.raises(DataError, match="float \\(B, C, H, W\\)"):
        method.training_step({"image": torch.zeros(2, 1, 32, 32, dtype=torch.uint8)}, CTX)
    with pytest.raises(ConfigError, match="one head"):
        method.inference_net("over")
    assert isinstance(method.config, InfoSegConfig)


def test_loss_stays_float32_under_autocast():
    method = _method(hflip_p=0.0)
    images = {"image": _two_textures(4)}
    plain = method.training_step(images, CTX)["loss"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = method.training_step(images, CTX)["loss"]
    assert mixed.dtype == torch.float32
    assert abs(float(mixed.detach()) - float(plain.detach())) < 0.05 * float(plain.detach())


PRESETS = sorted((Path(__file__).resolve().parents[2] / "training" / "presets").glob("infoseg_*.yaml"))


def test_every_paper_row_and_the_cpu_and_neu_presets_exist():
    names = {p.stem for p in PRESETS}
    assert names == {"infoseg_cocostuff3", "infoseg_cocostuff15", "infoseg_potsdam3", "infoseg_potsdam6",
                     "infoseg_cpu", "infoseg_scratch_cpu", "infoseg_neu", "infoseg_scratch_neu"}


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_builds_and_matches_its_dataset(path):
    preset = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert path.read_text(encoding="utf-8").startswith("# ")  # header comment
    assert preset["method"] == "infoseg"
    method = build_method("infoseg", preset["method_config"])
    cfg = method.config
    train = preset["data"]["train"]
    assert cfg.channels == train["channels"] == preset["data"]["eval"]["channels"]
    if "classes" in train:
        assert cfg.n_clusters == train["classes"]
    assert preset["train"]["batch_size"] >= 2  # negatives come from the other images of the batch
    assert method.input_spec().native_size == (cfg.input.native_size, cfg.input.native_size)
