"""The k-means and random-CNN baselines: fitting, the inference net, evaluation protocols and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from training.__main__ import main as training_main
from training.errors import ConfigError, DataError, TrainingError
from training.evaluation import cluster_confusions, evaluate_baseline, score_protocols
from training.loaders import collate_same_size
from training.methods import FitContext, build_method
from training.methods.baselines import PixelFeatures
from training.methods.picie.kmeans import assign

NEU = "background,inclusion,patches,scratches"


def three_region_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two 1-channel 24x30 images with 3 flat intensities in differently placed regions, and their labels."""
    labels = torch.zeros(2, 24, 30, dtype=torch.int64)
    labels[0, :, 10:20], labels[0, :, 20:] = 1, 2
    labels[1, :8], labels[1, 8:16] = 2, 1
    levels = torch.tensor([0.15, 0.55, 0.9])
    return levels[labels].unsqueeze(1), labels  # (B, 1, H, W), (B, H, W)


def small_images(seed: int = 0, n: int = 2, size: int = 64) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


# -- k-means baseline -----------------------------------------------------------------------------------------------
def test_kmeans_recovers_three_flat_regions_exactly():
    images, labels = three_region_batch()
    method = build_method("kmeans", {"n_clusters": 3, "seed": 0})
    method.fit_centroids([{"image": images}])
    counts = cluster_confusions(method, [{"image": images, "label": labels}], device=torch.device("cpu"),
                                n_classes=3)
    scores = score_protocols(counts, ["low", "mid", "high"])["main"]
    assert scores["matching"] == "hungarian"
    assert scores["same_images"]["miou"] == 1.0
    assert scores["same_images"]["pixel_accuracy"] == 1.0
    assert sorted(scores["same_images"]["mapping"]) == [0, 1, 2]


@pytest.mark.parametrize("features", ["pixel", "patch", "local_stats"])
def test_kmeans_inference_net_is_nearest_centroid_softmax(features):
    images = small_images(n=2, size=20)
    method = build_method("kmeans", {"n_clusters": 4, "over_clusters": 7, "seed": 1, "features": features})
    method.fit_centroids([images])
    for head, k in {"main": 4, "over": 7}.items():
        probs = method.inference_net(head)(images)  # (B, K, H, W)
        assert probs.shape == (2, k, 20, 20) and probs.dtype == torch.float32
        torch.testing.assert_close(probs.sum(dim=1), torch.ones(2, 20, 20))
        feats = method.fit_features(images).permute(0, 2, 3, 1).reshape(-1, method.features.out_dim)
        centroids = method.centroids if head == "main" else method.centroids_over
        nearest, _ = assign(feats, centroids)
        assert torch.equal(probs.argmax(dim=1).flatten(), nearest)


def test_patch_features_copy_the_neighbourhood():
    x = torch.arange(2 * 5 * 6, dtype=torch.float32).view(1, 2, 5, 6)
    feats = PixelFeatures(channels=2, kind="patch", patch_size=3)(x)  # (1, 18, 5, 6), channel (c, i, j)
    assert feats.shape == (1, 18, 5, 6)
    torch.testing.assert_close(feats[:, 4], x[:, 0])  # c=0, centre (1, 1)
    torch.testing.assert_close(feats[0, 9 + 5, 2, 1:5], x[0, 1, 2, 2:6])  # c=1, offset (1, 2): right neighbour


def test_local_stats_of_a_flat_image():
    feats = PixelFeatures(channels=1, kind="local_stats", patch_size=3)(torch.full((1, 1, 6, 6), 0.3))
    torch.testing.assert_close(feats[:, 0], feats[:, 1])  # value == local mean
    assert float(feats[:, 2].max()) < 1e-3  # local std ~ 0 (up to float32 cancellation in E[x^2] - E[x]^2)


def test_unfitted_baseline_refuses_to_predict():
    method = build_method("kmeans", {"n_clusters": 2})
    with pytest.raises(TrainingError, match="fit"):
        method.inference_net()


@pytest.mark.parametrize("values", [{"features": "edges"}, {"patch_size": 4}, {"n_clusters": 1},
                                    {"over_clusters": 1}, {"temperature": 0.0}, {"channels": 2}])
def test_bad_config_is_a_config_error(values):
    with pytest.raises(ConfigError):
        build_method("kmeans", values)


@pytest.mark.parametrize("values", [{"upsample": "pixels"}, {"features": "patch"}, {"feature_dim": 0}])
def test_bad_random_cnn_config_is_a_config_error(values):
    with pytest.raises(ConfigError):
        build_method("random_cnn", values)


# -- random-CNN baseline -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("upsample", ["logits", "features"])
def test_random_cnn_fits_and_outputs_probabilities_at_input_resolution(upsample):
    method = build_method("random_cnn", {"n_clusters": 3, "over_clusters": 5, "seed": 0, "upsample": upsample,
                                         "feature_dim": 16})
    assert not [p for p in method.parameters() if p.requires_grad]  # nothing to train
    losses = method.fit_centroids([small_images(0), small_images(1)])
    assert set(losses) == {"main", "over"} and all(np.isfinite(v) for v in losses.values())
    assert int(method.fit_points) == 4 * 64  # pixels_per_image (64) from each of 4 images
    images = small_images(2)
    probs = method.inference_net("over")(images)
    assert probs.shape == (2, 5, 64, 64)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(2, 64, 64))
    if upsample == "features":  # per-pixel features: the argmax is the nearest centroid of each input pixel
        feats = method.fit_features(images).permute(0, 2, 3, 1).reshape(-1, 16)
        assert torch.equal(probs.argmax(dim=1).flatten(), assign(feats, method.centroids_over)[0])


def test_random_cnn_seed_decides_weights_and_centroids():
    def fitted(seed: int):
        m = build_method("random_cnn", {"n_clusters": 3, "seed": seed, "feature_dim": 8})
        m.fit_centroids([small_images(0)])
        return m

    a, b, c = fitted(0), fitted(0), fitted(1)
    torch.manual_seed(123)  # the global RNG plays no part with an explicit seed
    for name, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[name]), name
    assert not torch.equal(a.features.net.backbone.conv1.weight, c.features.net.backbone.conv1.weight)
    assert not torch.equal(a.centroids, c.centroids)


def test_state_dict_round_trip_predicts_the_same():
    a = build_method("random_cnn", {"n_clusters": 3, "seed": 0, "feature_dim": 8})
    a.fit_centroids([small_images(0)])
    b = build_method("random_cnn", {"n_clusters": 3, "seed": 5, "feature_dim": 8})
    b.load_state_dict(a.state_dict())
    images = small_images(3)
    assert torch.equal(a.predict(images), b.predict(images))


# -- engine hooks -----------------------------------------------------------------------------------------------------
def test_engine_hooks_fit_once_and_steps_change_nothing():
    method = build_method("kmeans", {"n_clusters": 3, "seed": 0})
    images, _ = three_region_batch()
    logged = {}
    ctx = FitContext(device=torch.device("cpu"), train_loader=[{"image": images}], log=logged.update)
    method.on_epoch_start(ctx)
    assert "kmeans_loss_main" in logged
    centroids = method.centroids.clone()
    out = method.training_step({"image": images, "index": torch.arange(2)}, ctx)
    loss = out["loss"].detach()
    assert torch.isfinite(loss) and float(loss) < 1e-8  # flat regions: zero distortion
    out["loss"].backward()
    optimizer = method.configure_optimizer()
    optimizer.step()
    ctx.train_loader = [{"image": small_images(4, size=24)}]  # different data: an already fitted method keeps its fit
    method.on_epoch_start(ctx)
    assert torch.equal(method.centroids, centroids)


def test_fit_stops_after_the_fit_instead_of_running_epochs_of_no_op_steps(tmp_path, capsys):
    """`fit --preset anomaly_neu` ran 2,010 no-op steps (35 min): a gradient-free method stops at step 1."""
    import cv2

    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        cv2.imwrite(str(frames / f"f{i}.png"), rng.integers(0, 256, (32, 40), dtype=np.uint8))
    code = training_main(["fit", "--no-progress", "--preset", "kmeans_neu", "--data", str(frames), "--out",
                          str(tmp_path / "run"), "--set", "train.epochs=5", "--set", "train.batch_size=2",
                          "--set", "method_config.n_clusters=2", "--set", "method_config.over_clusters=0"])
    assert code == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("fitted: step 1, epoch 0")
    assert (tmp_path / "run" / "checkpoints" / "last").exists()


def test_fit_without_loader_length_streams():
    method = build_method("kmeans", {"n_clusters": 2, "seed": 0, "kmeans_init_batches": 2})
    method.fit_centroids(small_images(i, n=1, size=16) for i in range(5))  # a generator: no len()
    assert int(method.fit_points) == 5 * 16 * 16  # pixels_per_image 256 = every pixel
    assert method.predict(small_images(9, n=1, size=16)).unique().numel() == 2


def test_fit_rejects_wrong_channels():
    method = build_method("kmeans", {"n_clusters": 2, "channels": 3})
    with pytest.raises(TrainingError, match=r"\(B, 3, H, W\)"):
        method.fit_centroids([torch.rand(1, 1, 8, 8)])


# -- protocols ---------------------------------------------------------------------------------------------------------
def test_calibration_mapping_differs_from_same_image_mapping_where_it_should():
    # On eval, cluster 0 is mostly class 1 and cluster 1 mostly class 0; on calibration the other way round.
    eval_counts = {"main": np.array([[10, 90], [80, 20]])}
    calib_counts = {"main": np.array([[90, 10], [20, 80]])}
    out = score_protocols(eval_counts, ["bg", "defect"], calib_counts)["main"]
    assert out["same_images"]["mapping"] == [1, 0]
    assert out["calibration"]["mapping"] == [0, 1]
    assert out["same_images"]["pixel_accuracy"] == pytest.approx(170 / 200)
    assert out["calibration"]["pixel_accuracy"] == pytest.approx(30 / 200)
    agree = score_protocols(eval_counts, ["bg", "defect"], {"main": eval_counts["main"] * 3})["main"]
    assert agree["calibration"] == agree["same_images"]  # same argmax structure: same mapping, same scores


def test_over_clustering_head_is_scored_many_to_one():
    counts = {"main": np.eye(2, dtype=np.int64) * 5, "over": np.array([[5, 0], [4, 1], [0, 7]])}
    out = score_protocols(counts, ["a", "b"])
    assert out["main"]["matching"] == "hungarian" and out["over"]["matching"] == "many_to_one"
    assert out["over"]["same_images"]["mapping"] == [0, 0, 1]
    assert out["over"]["same_images"]["pixel_accuracy"] == pytest.approx(16 / 17)


def test_evaluate_baseline_with_calibration_loader():
    images, labels = three_region_batch()
    method = build_method("kmeans", {"n_clusters": 3, "over_clusters": 4, "seed": 0})
    batch = [{"image": images, "label": labels}]
    calib = [{"image": images[:1], "label": labels[:1]}]
    result = evaluate_baseline(method, batch, batch, class_names=["a", "b", "c"], calibration_loader=calib)
    assert result["eval_pixels"] == labels.numel()
    assert result["heads"]["main"]["calibration"]["miou"] == 1.0  # image 0 alone names all 3 clusters
    assert result["heads"]["over"]["k"] == 4


def test_images_of_different_sizes_in_one_batch_are_a_data_error():
    items = [{"image": torch.zeros(1, 4, 4), "index": torch.tensor(0)},
             {"image": torch.zeros(1, 5, 4), "index": torch.tensor(1)}]
    with pytest.raises(DataError, match="--batch-size 1"):
        collate_same_size(items)


# -- CLI --------------------------------------------------------------------------------------------------------------
def test_cli_kmeans_on_the_sample_writes_json(sample_dir, tmp_path, capsys):
    out = tmp_path / "kmeans.json"
    rc = training_main(["baseline", "--kind", "kmeans", "--data", str(sample_dir), "--fit-split", "train",
                        "--eval-split", "holdout", "--calibration-split", "calibration", "--k", "4", "--k-over", "6",
                        "--class-names", NEU, "--seed", "3", "--threads", "1", "--out", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["method"] == "kmeans" and report["config"]["seed"] == 3
    assert report["fit"]["images"] == 32 and report["eval"]["images"] == 8 and report["calibration"]["images"] == 6
    main, over = report["heads"]["main"], report["heads"]["over"]
    assert (main["k"], main["matching"], over["k"], over["matching"]) == (4, "hungarian", 6, "many_to_one")
    for entry in (main, over):
        for protocol in ("same_images", "calibration"):
            s = entry[protocol]
            assert 0.0 <= s["miou"] <= 1.0 and 0.0 <= s["pixel_accuracy"] <= 1.0
            assert list(s["per_class"]) == NEU.split(",") and len(s["mapping"]) == entry["k"]
    # the mapping fitted on the scored images is the best possible on them
    assert main["same_images"]["pixel_accuracy"] >= main["calibration"]["pixel_accuracy"]
    assert "mapping on same_images" in capsys.readouterr().out


def test_cli_dataset_specs_and_their_channels(sample_dir, tmp_path):
    fit_spec = tmp_path / "fit.yaml"
    fit_spec.write_text(f"kind: mask_folder\nroot: {sample_dir}\nsplit: train\nmasks_dir: null\nchannels: 3\n")
    eval_spec = tmp_path / "eval.json"
    eval_spec.write_text(json.dumps({"kind": "mask_folder", "root": str(sample_dir), "split": "holdout"}))
    out = tmp_path / "rgb.json"
    rc = training_main(["baseline", "--kind", "kmeans", "--data-spec", str(fit_spec), "--eval-spec", str(eval_spec),
                        "--k", "3", "--out", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["config"]["channels"] == 3 and report["eval"]["spec"]["channels"] == 3
    assert report["fit"]["images"] == 32 and report["eval"]["images"] == 8
    assert report["fit"]["spec"]["crop"] is None  # fitted on whole images
    assert report["heads"]["main"]["k"] == 3 and len(report["heads"]["main"]["same_images"]["per_class"]) == 4


def test_cli_random_cnn_on_the_sample(sample_dir, tmp_path):
    out = tmp_path / "cnn.json"
    rc = training_main(["baseline", "--kind", "random-cnn", "--data", str(sample_dir), "--fit-split", "train",
                        "--eval-split", "holdout", "--fit-images", "4", "--threads", "1", "--out", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["method"] == "random_cnn" and report["fit"]["images"] == 4 and report["calibration"] is None
    assert report["eval_pixels"] == 8 * 200 * 200
    assert set(report["heads"]) == {"main"} and report["heads"]["main"]["same_images"]["miou"] > 0


def test_cli_without_labels_is_a_clean_error(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    import cv2

    cv2.imwrite(str(folder / "a.png"), np.zeros((8, 8), np.uint8))
    rc = training_main(["baseline", "--kind", "kmeans", "--data", str(folder)])
    assert rc == 2
    assert "no labels" in capsys.readouterr().err
