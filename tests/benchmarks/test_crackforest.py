"""benchmarks/crackforest.py and the accuracy benchmark's dataset parameter, on a synthetic CrackForest-like folder."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from scipy.io import savemat

from benchmarks import crackforest
from benchmarks.accuracy import records, report, runner
from benchmarks.accuracy.settings import Settings
from benchmarks.datasets import CRACKFOREST, DATASETS

H, W = 32, 48


def fake_crackforest(root, n_images=6, n_labelled=4):
    """image/NNN.jpg (RGB) for every id, groundTruth/NNN.mat for the first ``n_labelled``: a dark horizontal
    crack (value 2), an enclosed area (3) and one pixel of 4 on background 1."""
    source = root / "crackforest"
    (source / "image").mkdir(parents=True)
    (source / "groundTruth").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n_images):
        image_id = f"{i + 1:03d}"
        seg = np.ones((H, W), np.uint8)
        seg[10 + i:12 + i, 4:40] = 2
        seg[20:24, 30:36] = 3
        seg[0, 0] = 4
        image = (rng.integers(120, 160, (H, W, 3))).astype(np.uint8)
        image[seg == 2] = 30
        cv2.imwrite(str(source / "image" / f"{image_id}.jpg"), image)
        if i < n_labelled:
            savemat(source / "groundTruth" / f"{image_id}.mat",
                    {"groundTruth": {"Segmentation": seg, "Boundaries": np.zeros_like(seg)}})
    return source


def test_conversion_maps_1_to_background_and_the_rest_to_crack(tmp_path):
    source = fake_crackforest(tmp_path)
    folder = crackforest.mask_folder(tmp_path, tmp_path / "cache")
    assert folder == tmp_path / "cache" / f"crackforest_v{crackforest.CONVERSION_VERSION}"
    assert sorted(p.name for p in (folder / "images").iterdir()) == sorted(p.name for p in (source / "image").iterdir())
    assert (folder / "labels.txt").read_text().split() == ["background", "crack"]
    for mat in sorted((source / "groundTruth").glob("*.mat")):
        seg = crackforest.read_segmentation(mat)
        mask = cv2.imread(str(folder / "masks" / f"{mat.stem}.png"), cv2.IMREAD_UNCHANGED)
        assert mask.dtype == np.uint8 and mask.shape == (H, W)
        assert np.array_equal(mask, (seg != 1).astype(np.uint8))
        assert mask[0, 0] == 1 and mask[21, 31] == 1 and mask[5, 2] == 0  # 4 and 3 are crack, 1 background
    assert len(list((folder / "masks").iterdir())) == 4
    assert json.loads((folder / "conversion.json").read_text())["rule"] == crackforest.CLASS_RULE


def test_conversion_is_reused_and_an_interrupted_one_leaves_nothing(tmp_path, monkeypatch):
    fake_crackforest(tmp_path)
    cache = tmp_path / "cache"

    def broken(path):
        raise ValueError(f"{path}: unreadable")

    monkeypatch.setattr(crackforest, "read_segmentation", broken)
    with pytest.raises(ValueError, match="unreadable"):
        crackforest.mask_folder(tmp_path, cache)
    assert list(cache.iterdir()) == []  # no half-written view, no temporary folder
    monkeypatch.undo()
    folder = crackforest.mask_folder(tmp_path, cache)
    monkeypatch.setattr(crackforest, "_convert", lambda *a: pytest.fail("converted twice"))
    assert crackforest.mask_folder(tmp_path / "crackforest", cache) == folder  # the dataset folder itself works too


def test_two_runs_converting_at_once_share_one_view(tmp_path, monkeypatch):
    """Two benchmark processes started together both convert; the one that finishes second keeps the first's view
    (the second rename used to fail with 'Directory not empty' and end that run)."""
    fake_crackforest(tmp_path)
    cache = tmp_path / "cache"
    convert = crackforest._convert
    first: list = []

    def racing(source, out):  # the other run finishes its conversion while this one is converting
        convert(source, out)
        if not first:
            monkeypatch.setattr(crackforest, "_convert", convert)
            first.append(crackforest.mask_folder(tmp_path, cache))
            (first[0] / "images" / "other_run.txt").write_text("x")

    monkeypatch.setattr(crackforest, "_convert", racing)
    folder = crackforest.mask_folder(tmp_path, cache)
    assert folder == first[0] and (folder / "images" / "other_run.txt").is_file()  # the other run's view untouched
    assert [p.name for p in cache.iterdir()] == [folder.name]  # no temporary folder left


def test_a_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no CrackForest here"):
        crackforest.mask_folder(tmp_path, tmp_path / "cache")


def test_split_rule_five_percent_calibration_rest_eval_all_images_train():
    images = [f"{i:03d}" for i in range(1, 156)]
    labelled = images[:118]
    split = crackforest.make_split(images, labelled, seed=0)
    assert split["counts"] == {"train": 155, "calibration": 6, "eval": 112}
    assert split["train"] == images and sorted(split["calibration"] + split["eval"]) == labelled
    assert not set(split["calibration"]) & set(split["eval"])
    assert split["calibration"] != labelled[:6]  # drawn, not the first ids
    assert crackforest.make_split(list(reversed(images)), list(reversed(labelled)), seed=0) == split
    assert crackforest.make_split(images, labelled, seed=1)["calibration"] != split["calibration"]
    assert crackforest.make_split(images, images[:3], seed=0)["counts"]["calibration"] == 1  # at least one
    with pytest.raises(ValueError, match="without an image"):
        crackforest.make_split(images[:3], ["999"])


def test_committed_split_follows_its_rule():
    split = json.loads(CRACKFOREST.split_file.read_text())
    again = crackforest.make_split(split["train"], split["calibration"] + split["eval"], seed=split["seed"],
                                   fraction=split["calibration_fraction"])
    assert again == split
    assert split["counts"] == {"train": 155, "calibration": 6, "eval": 112}


def test_a_baseline_row_on_crackforest_scores_two_classes(tmp_path):
    fake_crackforest(tmp_path)
    folder = CRACKFOREST.mask_folder(tmp_path, tmp_path / "cache")
    source = tmp_path / "crackforest"
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps(crackforest.make_split(crackforest.image_ids(source),
                                                            crackforest.labelled_ids(source), fraction=0.25)))
    settings = Settings(eval_limit=None, data_root=str(folder), dataset="crackforest",
                        split_file=str(split_file), tuning_subset=None, baseline_fit_images=4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        record = runner.run_one("kmeans", 0, settings, out=tmp_path / "out", runs_dir=tmp_path / "runs")
    finally:
        torch.set_num_threads(threads)
    protos = record["checkpoints"]["final"]["protocols"]
    assert protos["a"] is None  # the main head's 4 clusters are not the 2 classes: no Hungarian protocol
    assert set(protos["b"]["iou"]) == {"background", "crack"} and record["eval"]["images"] == 3
    assert records.run_paths(tmp_path / "out", "accuracy_crackforest", "kmeans", 0)[0].is_file()
    summary = report.write_reports(tmp_path / "out", settings)
    assert summary["dataset"] == "CrackForest" and summary["classes"] == ["background", "crack"]
    text = (tmp_path / "out" / "accuracy_crackforest.md").read_text()
    assert "# Accuracy on CrackForest" in text and "2, 3 and 4 are crack" in text and "IoU crack" in text
    assert "fitted on the 1 calibration images" in text and sorted(DATASETS) == ["crackforest", "neu"]
