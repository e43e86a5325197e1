"""kind: mask_folder — NEU-Seg layout, split files, class names, and errors naming the files."""

import json

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from training.data import build_dataset
from training.errors import ConfigError, DataError


def _write_pair(root, image_id, label, scale=40, suffix=".png"):
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(root / "images" / f"{image_id}{suffix}"), (label * scale).astype(np.uint8))
    assert cv2.imwrite(str(root / "masks" / f"{image_id}.png"), label.astype(np.uint8))


@pytest.fixture
def tree(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "seg"
    for i, (h, w) in enumerate([(20, 30), (40, 36), (50, 50)]):
        _write_pair(root, f"{i:03d}", rng.integers(0, 4, (h, w)))
    return root


def test_bundled_sample_and_its_splits(sample_dir):
    holdout = build_dataset({"kind": "mask_folder", "root": str(sample_dir), "split": "holdout"}, train=False)
    splits = json.loads((sample_dir / "splits.json").read_text())
    assert holdout.ids == splits["holdout"] and len(holdout) == 8
    assert holdout.class_names == ["background", "inclusion", "patches", "scratches"]
    item = holdout[0]
    assert item["image"].shape == (3, 200, 200) and item["label"].shape == (200, 200)
    assert item["label"].dtype == torch.int64 and int(item["label"].max()) <= 3
    calibration = build_dataset(
        {"kind": "mask_folder", "root": str(sample_dir), "split_file": "splits.json", "split": "calibration"},
        train=False,
    )
    assert calibration.ids == splits["calibration"]


def test_every_image_by_default_and_explicit_ids(tree):
    ds = build_dataset({"kind": "mask_folder", "root": str(tree)}, train=False)
    assert ds.ids == ["000", "001", "002"] and ds.class_names is None
    picked = build_dataset({"kind": "mask_folder", "root": str(tree), "ids": ["002", "000"]}, train=False)
    assert picked.ids == ["002", "000"] and picked[0]["image"].shape == (3, 50, 50)


def test_text_split_file_relative_to_cwd(tree, tmp_path, monkeypatch):
    (tmp_path / "list.txt").write_text("# held out\n001\n\n002\n")
    monkeypatch.chdir(tmp_path)
    ds = build_dataset({"kind": "mask_folder", "root": str(tree), "split_file": "list.txt"}, train=False)
    assert ds.ids == ["001", "002"]


def test_split_file_errors(tree, sample_dir):
    with pytest.raises(ConfigError, match="no split 'test'; its splits: train, calibration, holdout"):
        build_dataset({"kind": "mask_folder", "root": str(sample_dir), "split": "test"}, train=False)
    with pytest.raises(DataError, match=r"splits\.json does not exist"):
        build_dataset({"kind": "mask_folder", "root": str(tree), "split": "eval"}, train=False)
    with pytest.raises(DataError, match=r"1 id\(s\) of the spec's 'ids' have no image, e.g. \['404'\]"):
        build_dataset({"kind": "mask_folder", "root": str(tree), "ids": ["000", "404"]}, train=False)
    with pytest.raises(ConfigError, match="either 'ids' or 'split_file'"):
        build_dataset({"kind": "mask_folder", "root": str(sample_dir), "ids": ["a"], "split": "train"}, train=False)


def test_missing_mask_names_image_and_mask(tree):
    (tree / "masks" / "001.png").unlink()
    with pytest.raises(DataError, match=r"images/001\.png has no mask: .*masks/001\.png does not exist"):
        build_dataset({"kind": "mask_folder", "root": str(tree)}, train=False)
    unlabelled = build_dataset({"kind": "mask_folder", "root": str(tree), "masks_dir": None}, train=False)
    assert set(unlabelled[1]) == {"image", "index"}


def test_labels_txt_and_labelme_convention(tree):
    (tree / "labels.txt").write_text("__ignore__\n_background_\nInclusions\nPatches\nScratches\n")
    ds = build_dataset({"kind": "mask_folder", "root": str(tree)}, train=False)
    assert ds.class_names == ["_background_", "Inclusions", "Patches", "Scratches"]
    named = build_dataset({"kind": "mask_folder", "root": str(tree), "class_names": ["bg", "x", "y", "z"]},
                          train=False)
    assert named.class_names == ["bg", "x", "y", "z"]


def test_out_of_range_mask_value_is_a_data_error(tree):
    mask = cv2.imread(str(tree / "masks" / "002.png"), cv2.IMREAD_UNCHANGED)
    mask[0, 0] = 9
    cv2.imwrite(str(tree / "masks" / "002.png"), mask)
    ds = build_dataset({"kind": "mask_folder", "root": str(tree), "class_names": ["a", "b", "c", "d"]}, train=False)
    with pytest.raises(DataError, match=r"002\.png holds class values \[9\] but the dataset has 4 classes"):
        ds[2]
    mask[0, 0] = 255  # ignore is allowed
    cv2.imwrite(str(tree / "masks" / "002.png"), mask)
    assert int(ds[2]["label"][0, 0]) == 255


def test_mask_size_must_match_image(tree):
    cv2.imwrite(str(tree / "masks" / "000.png"), np.zeros((5, 5), np.uint8))
    with pytest.raises(DataError, match=r"mask .*000\.png is 5x5 but its image .*000\.png is 30x20"):
        build_dataset({"kind": "mask_folder", "root": str(tree)}, train=False)[0]


def test_training_crops_keep_image_and_label_aligned(tree):
    ds = build_dataset(
        {"kind": "mask_folder", "root": str(tree), "crop": 32, "channels": 1, "train_labels": True, "seed": 1},
        train=True,
    )
    for i in range(len(ds)):
        item = ds[i]
        image, label = item["image"][0], item["label"]
        assert image.shape == (32, 32) and label.shape == (32, 32)
        inside = label != 255
        assert torch.equal(torch.round(image[inside] * 255 / 40).long(), label[inside])  # PNG images: lossless
        assert (image[~inside] == 0).all()
    assert int((ds[0]["label"] == 255).sum()) == 32 * 32 - 20 * 30  # 20x30 image padded to 32x32
    without = build_dataset({"kind": "mask_folder", "root": str(tree), "crop": 32}, train=True)
    assert "label" not in without[0]  # labels stay out of training unless asked for


def test_dataloader_batches(tree):
    ds = build_dataset({"kind": "mask_folder", "root": str(tree), "crop": 16, "train_labels": True}, train=True)
    batch = next(iter(DataLoader(ds, batch_size=3)))
    assert batch["image"].shape == (3, 3, 16, 16) and batch["label"].shape == (3, 16, 16)
    assert batch["label"].dtype == torch.int64


def test_duplicate_ids_are_refused(tree):
    _write_pair(tree, "001", np.zeros((4, 4), np.uint8), suffix=".jpg")
    with pytest.raises(DataError, match="two images share the id '001'"):
        build_dataset({"kind": "mask_folder", "root": str(tree)}, train=False)
