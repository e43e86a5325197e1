"""The PiCIE method: a training step, the epoch hooks, inference, resume, equivariance, quirk flags, weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from training.errors import CheckpointError, ConfigError, DataError, TrainingError
from training.methods import FitContext, build_method
from training.methods.picie import PiCIE
from training.methods.picie.views import ViewSettings, ViewTables, blur_sigma, photometric_view
from training.nets.resnet import resnet18

SMALL = {"n_clusters": 3, "channels": 1, "kmeans_init_batches": 1, "kmeans_init_iters": 3,
         "kmeans_pixels_per_image": 32}


class RandomImages(Dataset):
    def __init__(self, n: int, channels: int = 1, size: int = 64, seed: int = 0):
        self.images = torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i], "index": torch.tensor(i)}


def _ctx(n: int = 4, channels: int = 1, size: int = 32, epoch: int = 0) -> FitContext:
    loader = DataLoader(RandomImages(n, channels, size), batch_size=4, shuffle=False)
    return FitContext(device=torch.device("cpu"), epoch=epoch, train_loader=loader)


def _batch(ctx: FitContext) -> dict[str, torch.Tensor]:
    return next(iter(ctx.train_loader))


def _prepared(config: dict, ctx: FitContext | None = None) -> tuple[PiCIE, FitContext]:
    torch.manual_seed(0)
    method = build_method("picie", {**SMALL, **config})
    ctx = ctx or _ctx(channels=method.config.channels)
    method.train()
    method.on_epoch_start(ctx)
    return method, ctx  # type: ignore[return-value]


def test_one_training_step_gives_finite_loss_and_gradients_everywhere():
    method, ctx = _prepared({"over_clusters": 5})
    out = method.training_step(_batch(ctx), ctx)
    assert torch.isfinite(out["loss"]) and out["loss"].ndim == 0
    assert {"loss_within", "loss_cross", "loss_over", "loss_within_over"} <= set(out)
    out["loss"].backward()
    trainable = [(n, p) for n, p in method.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("net.") for n, _ in trainable)
    missing = [n for n, p in trainable if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert missing == []
    assert all(p.grad is None and not p.requires_grad for p in method.label_net.parameters())
    assert not method.label_net.training and method.net.training
    # Centroids and class weights are buffers (checkpointed), one set per view and head.
    buffers = dict(method.named_buffers())
    assert buffers["centroids1"].shape == (3, 128) and buffers["centroids2_over"].shape == (5, 128)
    assert float(buffers["class_weight1"].sum()) == pytest.approx(1.0, abs=1e-5)
    assert float(buffers["centroids1"].norm(dim=1).min()) > 0


def test_inference_net_heads_and_input_spec():
    method, ctx = _prepared({"over_clusters": 5, "eval_centroids": "view1"})
    method.on_epoch_end(ctx)
    assert torch.equal(method.centroids, method.centroids1)
    assert method.eval_heads() == {"main": 3, "over": 5}
    method.eval()
    probs = method.inference_net("over")(torch.rand(2, 1, 64, 96))
    assert probs.shape == (2, 5, 64, 96)
    assert torch.allclose(probs.sum(dim=1), torch.ones(2, 64, 96), atol=1e-5)
    assert method.predict(torch.rand(1, 1, 64, 64)).shape == (1, 64, 64)
    with pytest.raises(ConfigError, match="heads"):
        method.inference_net("aux")
    spec = method.input_spec()
    assert (spec.stride, spec.channels, spec.color_order, spec.mean) == (32, 1, "gray", (0.449,))
    rgb = build_method("picie", {"channels": 3}).input_spec()
    assert rgb.mean == (0.485, 0.456, 0.406) and rgb.color_order == "rgb"


def test_refit_centroids_at_epoch_end_and_kmeans_losses_logged():
    method, ctx = _prepared({})
    logs: list[dict] = []
    ctx.log = logs.append
    method.on_epoch_end(ctx)
    assert not torch.equal(method.centroids, torch.zeros_like(method.centroids))
    assert not torch.equal(method.centroids, method.centroids1)
    assert "kmeans_loss_clean" in logs[-1] and logs[-1]["kmeans_loss_clean"] > 0


def test_resume_inside_an_epoch_reproduces_the_step():
    method, ctx = _prepared({})
    batch = _batch(ctx)
    state, extra = method.state_dict(), method.extra_state()
    loss = method.training_step(batch, ctx)["loss"].detach()
    resumed = build_method("picie", SMALL)
    resumed.load_state_dict(state)
    resumed.load_extra_state(extra)
    resumed.train()
    before = resumed.centroids1.clone()
    resumed.on_epoch_start(ctx)  # same epoch: already prepared, nothing is re-clustered
    assert torch.equal(resumed.centroids1, before)
    assert torch.equal(resumed.tables.uniforms, method.tables.uniforms)
    assert torch.allclose(resumed.training_step(batch, ctx)["loss"].detach(), loss, rtol=1e-6)
    resumed.on_epoch_start(_ctx(epoch=1))  # a new epoch re-clusters with new tables
    assert resumed.tables.seed != method.tables.seed


class Pool4(nn.Module):
    """A translation-equivariant toy 'net' with stride 4 (average pooling)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.avg_pool2d(x, 4)


def test_views_are_equivariant_on_a_translation_equivariant_toy():
    no_photometric = {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0, "p_grey": 0.0,
                      "p_blur": 0.0, "min_scale": 0.5}
    method = build_method("picie", {**SMALL, **no_photometric})
    method.tables = ViewTables(16, seed=3)
    size = 128
    r, c = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                          indexing="ij")
    ramp = ((r + 2 * c) / (3 * size)).expand(16, 1, size, size)  # a smooth image: G commutes with the toy net
    index = torch.arange(16)
    view1, view2, geo = method.make_views(ramp, index)
    f1, f2 = method.view_features(Pool4(), view1, view2, geo)  # G(x) then net vs net then G
    assert f1.shape == f2.shape == (16, 1, 32, 32)
    value_range = float(f1.max() - f1.min())
    assert float((f1 - f2).abs().max()) < 0.05 * value_range
    assert bool(geo.hflip.any()) and not bool(geo.hflip.all())
    # Without G on view 2's features the maps disagree: the transform is what aligns them.
    unaligned = nn.functional.interpolate(Pool4()(method.adapter(view2)), size=(32, 32))
    assert float((f1 - unaligned).abs().max()) > 0.2 * value_range


def test_real_views_align_in_shape_with_a_view_size():
    method = build_method("picie", {**SMALL, "view_size": 48})
    method.tables = ViewTables(4, seed=0)
    view1, view2, geo = method.make_views(torch.rand(4, 1, 64, 64), torch.arange(4))
    assert view1.shape == view2.shape == (4, 1, 48, 48)
    f1, f2 = method.view_features(method.net, view1, view2, geo)
    assert f1.shape == f2.shape == (4, 128, 12, 12)


def test_config_and_batch_errors_are_clear():
    with pytest.raises(ConfigError, match="no field"):
        build_method("picie", {"n_cluster": 3})
    with pytest.raises(ConfigError, match="eval_centroids"):
        build_method("picie", {"eval_centroids": "best"})
    with pytest.raises(ConfigError, match="channels"):
        build_method("picie", {"channels": 2})
    with pytest.raises(ConfigError, match="backbone_width 64"):
        build_method("picie", {"backbone_width": 32, "pretrained_weights": "r18.pth"})
    narrow = build_method("picie", {**SMALL, "backbone_width": 16, "feature_dim": 32})
    assert narrow.net(torch.rand(1, 1, 64, 64)).shape == (1, 32, 16, 16)
    method = build_method("picie", SMALL)
    batch = {"image": torch.rand(2, 1, 32, 32), "index": torch.tensor([0, 1])}
    with pytest.raises(TrainingError, match="on_epoch_start"):
        method.training_step(batch, _ctx())
    method.tables = ViewTables(2, seed=0)
    with pytest.raises(DataError, match=r"\[0, 2\)"):
        method.training_step({**batch, "index": torch.tensor([0, 5])}, _ctx())
    with pytest.raises(TrainingError, match=r"has 3 channels, PiCIE is configured for 1"):
        method.training_step({**batch, "image": torch.rand(2, 3, 32, 32)}, _ctx())
    no_len = FitContext(device=torch.device("cpu"), train_loader=[batch])
    with pytest.raises(TrainingError, match="length"):
        method.on_epoch_start(no_len)


def test_official_quirk_flags():
    u = torch.tensor([[0.1, 0.9, 0.1, 0.9, 0.1, 0.9, 0.1, 0.9, 0.0, 0.25, 0.5]], dtype=torch.float64)
    colour = torch.rand(1, 3, 16, 16)
    greyed = photometric_view(colour, u, ViewSettings(p_grey=1.0, p_blur=0.0))
    assert torch.allclose(greyed[:, 0], greyed[:, 1])
    kept = photometric_view(colour, u, ViewSettings(p_grey=1.0, p_blur=0.0, official_no_grey=True))
    assert not torch.allclose(kept[:, 0], kept[:, 1])
    fire, value = torch.tensor([0.25, 0.7]), torch.tensor([0.5, 0.5])
    assert blur_sigma(fire, value, ViewSettings()).tolist() == pytest.approx([1.05, 0.0])
    official = blur_sigma(fire, value, ViewSettings(official_blur_sigma=True))
    assert official.tolist() == pytest.approx([abs(3.8 * (0.25 - 0.5) + 0.1), 0.0])  # 0.85, not in [0.1, 2]

    def running_mean_moves(train_mode: bool) -> bool:
        torch.manual_seed(0)
        method = build_method("picie", {**SMALL, "balance": False, "official_kmeans_train_mode": train_mode})
        before = method.net.backbone.bn1.running_mean.clone()
        method.on_epoch_start(_ctx())
        return not torch.equal(before, method.net.backbone.bn1.running_mean)

    assert running_mean_moves(True) and not running_mean_moves(False)

    proportional, _ = _prepared({"official_proportional_weights": True})
    inverse, _ = _prepared({})
    w_p, w_i = proportional.class_weight1, inverse.class_weight1
    assert torch.allclose(w_p * w_i, (w_p * w_i)[0].expand_as(w_p), rtol=1e-4)  # w_p ∝ n, w_i ∝ 1/n

    dot, _ = _prepared({"official_dot_logits": True, "eval_centroids": "view1"})
    dot.on_epoch_end(_ctx())
    dot.eval()
    x = torch.rand(1, 1, 64, 64)
    feats = nn.functional.normalize(dot.net(dot.adapter(x)), dim=1)
    logits = torch.einsum("bdhw,kd->bkhw", feats, dot.centroids)
    expected = nn.functional.interpolate(logits, size=(64, 64), mode="bilinear", align_corners=False).softmax(1)
    assert torch.allclose(dot.inference_net()(x), expected, atol=1e-6)


def _torchvision_state(in_channels: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    state = resnet18(in_channels=in_channels).state_dict()
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    return state


def test_imagenet_weights_load_from_local_files(tmp_path):
    from safetensors.torch import save_file

    state = _torchvision_state()
    save_file(state, str(tmp_path / "r18.safetensors"))
    torch.save(state, tmp_path / "r18.pth")
    def fit_start(config: dict) -> PiCIE:
        method = build_method("picie", config)
        method.on_fit_start(_ctx())
        return method

    rgb = fit_start({"channels": 3, "pretrained_weights": str(tmp_path / "r18.safetensors")})
    assert torch.equal(rgb.net.backbone.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    assert torch.equal(rgb.label_net.backbone.conv1.weight, state["conv1.weight"])
    assert rgb.extra_state()["pretrained_loaded"]
    grey = fit_start({"channels": 1, "pretrained_weights": str(tmp_path / "r18.pth")})
    assert torch.allclose(grey.net.backbone.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))
    # A resumed run keeps its trained weights; a rebuilt checkpoint never needs the file.
    resumed = build_method("picie", {"channels": 1, "pretrained_weights": str(tmp_path / "gone.pth")})
    resumed.load_extra_state(grey.extra_state())
    resumed.on_fit_start(_ctx())
    with pytest.raises(CheckpointError, match="not found"):
        fit_start({"pretrained_weights": str(tmp_path / "missing.pth")})
    broken = {k: v for k, v in state.items() if not k.startswith("layer4")}
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match=r"broken.pth.*missing \d+ keys"):
        fit_start({"pretrained_weights": str(tmp_path / "broken.pth")})
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="cannot read"):
        fit_start({"pretrained_weights": str(tmp_path / "junk.pth")})
