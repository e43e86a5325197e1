"""PiCIE against the official code's numbers (tests/data/parity/picie_*.npz, FIXTURES.md "PiCIE")."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.data.equivariant import EquivariantParams, equivariant_transform, flip, resized_crop
from training.losses.picie import (
    class_weights,
    cluster_logits,
    nearest_centroid_labels,
    negative_sq_distance,
    normalize_features,
    picie_loss,
)
from training.methods.picie.kmeans import MiniBatchKMeans
from training.nets.resnet_fpn import ResNetFPN, from_official_key

F32 = {"rtol": 1e-5, "atol": 1e-7}


def _formula_weight(key: str, shape: tuple[int, ...], i: int) -> np.ndarray:
    """FIXTURES.md "Architecture fixtures": the i-th float entry of the official state_dict."""
    n = int(np.prod(shape))
    s = np.sin(0.37 * np.arange(n) + 1.3 * i)
    if key.endswith("running_var"):
        v = 1 + 0.5 * np.abs(s)
    elif key.endswith("running_mean"):
        v = 0.1 * s
    elif len(shape) == 1 and key.endswith("weight"):
        v = 1 + 0.1 * s
    elif len(shape) <= 1:
        v = 0.1 * s
    else:
        v = s * np.sqrt(2 / (n / shape[0]))
    return v.reshape(shape)


def test_resnet18_fpn_matches_official_architecture(parity):
    d = parity("picie_arch_resnet18_fpn")
    net = ResNetFPN(in_channels=3, out_dim=128).double()
    own = net.state_dict()
    official = [(str(k), tuple(int(v) for v in str(s).split(","))) for k, s in
                zip(d["state_dict_keys"], d["state_dict_shapes"], strict=True)]
    # Our float entries, in state_dict order, are the official ones under from_official_key, in the same order.
    own_float = [k for k, v in own.items() if v.is_floating_point()]
    assert own_float == [from_official_key(k) for k, _ in official]
    state = {from_official_key(k): torch.from_numpy(_formula_weight(k, shape, i)) for i, (k, shape) in
             enumerate(official)}
    assert all(tuple(own[k].shape) == tuple(v.shape) for k, v in state.items())
    net.load_state_dict({**own, **state})
    net.eval()
    x = torch.from_numpy(d["x"])
    with torch.no_grad():
        feats = net.backbone(x)
        out = net(x)
    for level, f in zip(range(2, 6), feats, strict=True):
        np.testing.assert_allclose(f.numpy(), d[f"expected_backbone_res{level}"], rtol=1e-10, atol=1e-12)
    assert out.shape == (2, 128, 16, 16)
    np.testing.assert_allclose(out.numpy(), d["expected_out_eval"], rtol=1e-10, atol=1e-12)


def test_official_decoder_names_map_to_pyramid_levels():
    assert from_official_key("module.decoder.layer4.weight") == "decoder.lateral2.weight"  # 1x1 on res2, 64 ch
    assert from_official_key("decoder.layer1.bias") == "decoder.lateral5.bias"
    assert from_official_key("module.backbone.layer1.0.conv1.weight") == "backbone.layer1.0.conv1.weight"


def _eqv_params(d: dict, hflip: bool = True, vflip: bool = False, crop: bool = True) -> EquivariantParams:
    idx = d["indices"]
    n = len(idx)
    return EquivariantParams(
        scale=torch.from_numpy(d["rscale"][idx]) if crop else torch.ones(n, dtype=torch.float64),
        offset=torch.from_numpy(d["rcrop"][idx]) if crop else torch.zeros(n, 2, dtype=torch.float64),
        hflip=torch.from_numpy(d["hflip_plist"][idx] < 0.5) if hflip else torch.zeros(n, dtype=torch.bool),
        vflip=torch.from_numpy(d["vflip_plist"][idx] < 0.5) if vflip else torch.zeros(n, dtype=torch.bool))


@pytest.mark.parametrize("name,size", [("image", 16), ("feature", 4)])
def test_equivariant_transforms_match_official(parity, name, size):
    d = parity("picie_eqv_transforms")
    x = torch.from_numpy(d[name])
    crop_only = _eqv_params(d, hflip=False)
    np.testing.assert_allclose(resized_crop(x, crop_only, (size, size)).numpy(), d[f"expected_crop_{name}"], **F32)
    np.testing.assert_array_equal(flip(x, _eqv_params(d, crop=False)).numpy(), d[f"expected_hflip_{name}"])
    both = equivariant_transform(x, _eqv_params(d), (size, size))
    np.testing.assert_allclose(both.numpy(), d[f"expected_crop_then_hflip_{name}"], **F32)
    if name == "feature":
        vflip = flip(x, _eqv_params(d, hflip=False, vflip=True, crop=False))
        np.testing.assert_array_equal(vflip.numpy(), d["expected_vflip_feature"])


def test_equivariant_params_from_uniforms_follow_the_official_tables(parity):
    d = parity("picie_eqv_transforms")
    idx = d["indices"]
    lo, hi = (float(v) for v in d["scale"])
    u = np.stack([(d["rscale"][idx] - lo) / (hi - lo), d["rcrop"][idx, 0], d["rcrop"][idx, 1],
                  d["hflip_plist"][idx], d["vflip_plist"][idx]], axis=1)
    params = EquivariantParams.from_uniforms(torch.from_numpy(u), min_scale=lo, max_scale=hi, p_hflip=0.5)
    out = equivariant_transform(torch.from_numpy(d["image"]), params, (16, 16))
    np.testing.assert_allclose(out.numpy(), d["expected_crop_then_hflip_image"], **F32)


def _kmeans_points(d: dict) -> list[torch.Tensor]:
    # Official feature_flatten: (B, D, H, W) -> (B*H*W, D) after F.normalize over channels.
    return [normalize_features(torch.from_numpy(f)).permute(0, 2, 3, 1).reshape(-1, f.shape[1])
            for f in d["features"]]


def test_minibatch_kmeans_update_rule_matches_official(parity):
    d = parity("picie_minibatch_kmeans")
    points = _kmeans_points(d)
    n_init = int(d["num_init_batches"])
    init_points = torch.cat(points[:n_init])
    np.testing.assert_allclose(init_points.numpy(), d["init_points"], **F32)
    km = MiniBatchKMeans(int(d["K"]), init_batches=n_init, batches_per_update=int(d["num_batches"]))
    km.init_from(init_points, torch.from_numpy(d["expected_init_centroids"]))
    for batch in points[n_init:]:
        km.add(batch)
    np.testing.assert_allclose(km.finish().numpy(), d["expected_centroids"], rtol=1e-5, atol=1e-6)
    assert km.loss == pytest.approx(float(d["expected_kmeans_loss"]), rel=1e-5)
    assert float(km.counts.sum()) == sum(p.shape[0] for p in points)


def test_compute_labels_matches_official(parity):
    d = parity("picie_compute_labels")
    f1 = normalize_features(torch.from_numpy(d["features_view1"]))
    np.testing.assert_allclose(negative_sq_distance(f1, torch.from_numpy(d["centroids1"])).numpy(),
                               d["expected_scores_view1"], **F32)
    for v in (1, 2):
        feats = normalize_features(torch.from_numpy(d[f"features_view{v}"]))
        labels = nearest_centroid_labels(feats, torch.from_numpy(d[f"centroids{v}"]))
        np.testing.assert_array_equal(labels.numpy(), d[f"expected_labels_view{v}"])
        counts = torch.bincount(labels.flatten(), minlength=d[f"centroids{v}"].shape[0])
        np.testing.assert_allclose(class_weights(counts, proportional=True).numpy(), d[f"expected_weight{v}"],
                                   **F32)


def test_inverse_class_weights_balance_the_clusters():
    counts = torch.tensor([10.0, 30.0, 0.0, 60.0])
    w = class_weights(counts)
    assert w[2] == 0
    assert torch.allclose(w * counts, (w * counts)[0].expand(4) * (counts > 0))  # w_k n_k equal where n_k > 0
    assert float(w.sum()) == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["picie_cluster_loss", "picie_cluster_loss_mse"])
def test_cluster_loss_and_gradients_match_official(parity, name):
    d = parity(name)
    f1 = torch.from_numpy(d["featmap1"]).requires_grad_()
    f2 = torch.from_numpy(d["featmap2"]).requires_grad_()
    assert str(d["metric_train"]) == "cosine" and not d["classifier_bias1"].any()
    out = picie_loss(f1, f2, torch.from_numpy(d["label1"]), torch.from_numpy(d["label2"]),
                     torch.from_numpy(d["centroids1"]), torch.from_numpy(d["centroids2"]),
                     torch.from_numpy(d["ce_weight1"]), torch.from_numpy(d["ce_weight2"]),
                     mse=bool(d["mse"]), distance_bias=False)  # official: dot-product logits, bias 0
    out["loss"].backward()
    for ours, theirs in [("loss", "loss"), ("loss_ce", "loss_ce"), ("loss_within", "loss_within"),
                         ("loss_cross", "loss_across"), ("loss_mse", "loss_mse")]:
        assert float(out[ours].detach()) == pytest.approx(float(d[f"expected_{theirs}"]), rel=1e-6, abs=1e-9), ours
    np.testing.assert_allclose(f1.grad.numpy(), d["expected_grad_featmap1"], rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(f2.grad.numpy(), d["expected_grad_featmap2"], rtol=1e-5, atol=1e-8)


def test_distance_bias_logits_rank_like_the_labels(parity):
    d = parity("picie_compute_labels")
    feats = normalize_features(torch.from_numpy(d["features_view1"]))
    c = torch.from_numpy(d["centroids1"])
    labels = nearest_centroid_labels(feats, c)
    assert torch.equal(cluster_logits(feats, c, distance_bias=True).argmax(1), labels)
    # The official dot-product logits disagree with the labels somewhere on this fixture (docs/METHODS.md §P15).
    assert not torch.equal(cluster_logits(feats, c, distance_bias=False).argmax(1), labels)
    assert torch.allclose(F.log_softmax(cluster_logits(feats, c, True), 1),
                          F.log_softmax(0.5 * negative_sq_distance(feats, c), 1), atol=1e-5)
