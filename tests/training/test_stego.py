"""STEGO (training/methods/stego.py, training/losses/stego.py): the loss on a hand-computed case and against an
independent numpy reference, the partner bank's nearest neighbours, one training step on the pretrained trunk,
the evaluated heads, and the configs it refuses. Export, verification and resume run in the per-method tests
(tests/export/test_methods.py, tests/training/test_resume_methods.py)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tests.tiny_configs import BACKBONE_TINY
from training.data import build_dataset
from training.errors import ConfigError, TrainingError
from training.losses.stego import centred_feature_correlation, correlation_term
from training.methods.base import FitContext, build_method
from training.methods.stego import PartnerBank

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "neu-seg"
R = 1 / math.sqrt(2)


def test_the_loss_on_a_hand_computed_case():
    # features: a = (1,0), (0,1); b = (1,0), (1,1). cos F = [[1, r], [0, r]], r = 1/sqrt(2).
    # row means 0.853553, 0.353553; mean of all 0.603553 -> centred F = [[0.75, 0.457107], [0.25, 0.957107]].
    # codes: a = (1,0), (0,1); b = (1,0), (-1,1): S = [[1, -r], [0, r]] -> max(S, 0) = [[1, 0], [0, r]].
    # shift 0.5: -(0.25 * 1 + 0.457107 * r) / 4 = -(0.25 + 0.323223) / 4 = -0.143306
    feats_a = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    feats_b = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    codes_a = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], requires_grad=True)
    codes_b = torch.tensor([[[1.0, 0.0], [-1.0, 1.0]]])
    torch.testing.assert_close(centred_feature_correlation(feats_a, feats_b),
                               torch.tensor([[[0.75, 0.457107], [0.25, 0.957107]]]), atol=1e-6, rtol=0)
    loss = correlation_term(feats_a, feats_b, codes_a, codes_b, shift=0.5)
    assert float(loss.detach()) == pytest.approx(-0.143306, abs=1e-6)
    # cosines: scaling features or codes changes nothing; only the codes get a gradient
    scaled = correlation_term(3 * feats_a, feats_b, 2 * codes_a.detach(), codes_b, 0.5)
    assert float(scaled) == pytest.approx(-0.143306, abs=1e-6)
    loss.backward()
    assert codes_a.grad is not None and codes_a.grad.abs().sum() > 0


def _numpy_term(fa, fb, ca, cb, shift):
    """An independent reference: loops over the batch, the batch-wide mean added back as the official code."""
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    corr = np.stack([unit(fa[i]) @ unit(fb[i]).T for i in range(len(fa))])
    centred = corr - corr.mean(axis=2, keepdims=True) + corr.mean()
    codes = np.stack([np.maximum(unit(ca[i]) @ unit(cb[i]).T, 0) for i in range(len(ca))])
    return -((centred - shift) * codes).mean()


def test_the_loss_matches_a_numpy_reference_over_a_batch():
    rng = np.random.default_rng(0)
    fa, fb = rng.normal(size=(3, 5, 7)), rng.normal(size=(3, 4, 7))
    ca, cb = rng.normal(size=(3, 5, 2)), rng.normal(size=(3, 4, 2))
    got = correlation_term(*(torch.tensor(x) for x in (fa, fb, ca, cb)), shift=0.1)
    assert float(got) == pytest.approx(_numpy_term(fa, fb, ca, cb, 0.1), abs=1e-9)


def test_the_bank_gives_nearest_images_other_than_the_image_itself():
    bank = PartnerBank(descriptors=torch.tensor([[1.0, 0.0], [R, R], [0.0, 1.0], [-1.0, 0.0]]),
                       points=torch.zeros(4, 3, 2, dtype=torch.float16), indices=torch.tensor([10, 11, 12, 13]))
    # image 10 (descriptor (1, 0)) is in the bank: its nearest others are 11 (cos r) then 12 (cos 0)
    assert bank.nearest(torch.tensor([[1.0, 0.0]]), torch.tensor([10]), k=2).tolist() == [[1, 2]]
    assert bank.nearest(torch.tensor([[1.0, 0.0]]), None, k=2).tolist() == [[0, 1]]
    assert bank.gather(torch.tensor([2, 2]), 3).shape == (2, 3, 2)


def _loader(crop: int = 64) -> DataLoader:
    spec = {"kind": "mask_folder", "root": str(SAMPLE), "channels": 1, "crop": crop}
    return DataLoader(build_dataset(spec, train=True), batch_size=4)


def test_one_step_on_the_frozen_trunk_trains_the_head_only_and_both_heads_predict():
    torch.manual_seed(0)
    method = build_method("stego", {"n_clusters": 4, **BACKBONE_TINY["stego"]})
    with pytest.raises(TrainingError, match="no partner bank"):
        method.training_step(next(iter(_loader())), FitContext(device=torch.device("cpu")))
    loader = _loader()
    ctx = FitContext(device=torch.device("cpu"), train_loader=loader, total_steps=5)
    method.prepare_backbones()
    trunk = method.backbone.trunk
    before = {k: v.clone() for k, v in trunk.state_dict().items()}
    method.on_fit_start(ctx)  # the bank's pass runs before any train(): BatchNorm statistics must not move
    assert len(method.bank) == 40 and method.bank.points.shape == (40, 32, 176 - 112)  # taps 1, 2: 24 + 40 ch
    assert int(method.clustered_at) == 0
    method.train()
    optimizer = method.configure_optimizer()
    out = method.training_step(next(iter(loader)), ctx)
    assert torch.isfinite(out["loss"]) and {"loss_self", "loss_knn", "loss_rand"} <= out.keys()
    out["loss"].backward()
    grads = {n: p.grad for n, p in method.named_parameters() if p.requires_grad}
    assert grads and all(n.startswith("codes.head.") for n in grads)
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values())
    optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in trunk.state_dict().items()), "the trunk must stay frozen"
    ctx.step = 5  # the run's last step refits the clusters with the trained head
    centroids = method.centroids.clone()
    method.on_step_end(ctx)
    assert int(method.clustered_at) == 5 and not torch.equal(centroids, method.centroids)
    assert method.eval_heads() == {"main": 4, "over": 6}
    frames = next(iter(_loader(crop=96)))["image"][:2, :, :80, :]  # 80 x 96, multiples of the trunk's stride 8
    for head, k in method.eval_heads().items():
        probs = method.inference_net(head)(frames)
        assert probs.shape == (2, k, 80, 96)
        torch.testing.assert_close(probs.sum(dim=1), torch.ones(2, 80, 96))
    assert method.predict(frames, "over").unique().numel() > 1


@pytest.mark.parametrize(("override", "message"), [
    ({"backbone": None}, "must be a frozen trunk with concat fusion"),
    ({"backbone": {"train": "finetune"}}, "must be a frozen trunk with concat fusion"),
    ({"backbone": {"fusion": "fpn"}}, "must be a frozen trunk with concat fusion"),
    ({"feature_samples": 20}, r"feature_samples\^2 = 400 points per partner exceed bank_points 256"),
    ({"code_dim": 0}, "code_dim must be >= 1"),
    ({"over_clusters": 1}, "over_clusters 0 or >= 2"),
])
def test_bad_configs_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        build_method("stego", override)
