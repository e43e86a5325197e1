"""kind: potsdam — IIC's preprocessed .mat layout on a generated tree."""

import numpy as np
import pytest
import scipy.io
import torch

from training.data import build_dataset
from training.errors import ConfigError, DataError

LISTS = {"unlabelled_train": ["7", "3"], "labelled_train": ["12", "0"], "labelled_test": ["5"]}


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "POTSDAM"
    (root / "imgs").mkdir(parents=True)
    (root / "gt").mkdir()
    for partition, ids in LISTS.items():
        (root / f"{partition}.txt").write_text("".join(f"{i}\n" for i in ids))
        for i in ids:
            img = np.zeros((200, 200, 4), np.uint8)
            img[..., 0], img[..., 1], img[..., 2], img[..., 3] = 10, 20, 30, int(i) + 40  # R, G, B, IR
            scipy.io.savemat(root / "imgs" / f"{i}.mat", {"img": img})
            if partition != "unlabelled_train":
                gt = (np.arange(200 * 200).reshape(200, 200) % 6).astype(np.int32)
                scipy.io.savemat(root / "gt" / f"{i}.mat", {"gt": gt})
    return root


def test_iid_defaults_and_rgbir_channel_order(tree):
    train = build_dataset({"kind": "potsdam", "root": str(tree)}, train=True)
    assert train.ids == ["7", "3", "12", "0", "5"]
    item = train[0]
    assert set(item) == {"image", "index"} and item["image"].shape == (4, 200, 200)
    expected = torch.tensor([10, 20, 30, 47], dtype=torch.float32) / 255
    assert torch.allclose(item["image"][:, 100, 100], expected)
    ev = build_dataset({"kind": "potsdam", "root": str(tree)}, train=False)
    assert ev.ids == ["12", "0", "5"] and ev.class_names[0] == "roads"
    label = ev[0]["label"]
    assert label.shape == (200, 200) and label.dtype == torch.int64
    assert torch.equal(label.flatten()[:7], torch.tensor([0, 1, 2, 3, 4, 5, 0]))


def test_three_class_merge(tree):
    ev = build_dataset({"kind": "potsdam", "root": str(tree), "classes": 3}, train=False)
    assert torch.equal(ev[0]["label"].flatten()[:6], torch.tensor([0, 1, 2, 2, 0, 1]))  # IIC's Potsdam-3
    assert len(ev.class_names) == 3


def test_rgb_and_grey_drop_ir(tree):
    rgb = build_dataset({"kind": "potsdam", "root": str(tree), "channels": 3}, train=False)[0]["image"]
    assert torch.allclose(rgb[:, 0, 0], torch.tensor([10.0, 20.0, 30.0]) / 255)
    grey = build_dataset({"kind": "potsdam", "root": str(tree), "channels": 1}, train=False)[0]["image"]
    assert grey.shape == (1, 200, 200)
    assert abs(float(grey[0, 0, 0]) - (0.299 * 10 + 0.587 * 20 + 0.114 * 30) / 255) < 1e-6


def test_train_labels_marks_unlabelled_tiles_ignore(tree):
    ds = build_dataset({"kind": "potsdam", "root": str(tree), "train_labels": True, "crop": 64, "seed": 0},
                       train=True)
    assert (ds[0]["label"] == 255).all() and ds[0]["label"].shape == (64, 64)
    assert (ds[2]["label"] < 6).all()


def test_iid_plus_partitions_and_errors(tree):
    ev = build_dataset({"kind": "potsdam", "root": str(tree), "partitions": ["labelled_test"]}, train=False)
    assert ev.ids == ["5"]
    with pytest.raises(ConfigError, match="unknown partition 'test'"):
        build_dataset({"kind": "potsdam", "root": str(tree), "partitions": ["test"]}, train=False)
    (tree / "gt" / "0.mat").unlink()
    with pytest.raises(DataError, match=r"gt/0\.mat does not exist"):
        ev = build_dataset({"kind": "potsdam", "root": str(tree)}, train=False)
        ev[1]
    scipy.io.savemat(tree / "imgs" / "5.mat", {"image": np.zeros((2, 2, 4), np.uint8)})
    with pytest.raises(DataError, match=r"5\.mat has no variable 'img' \(it has \['image'\]\)"):
        ev[2]
    (tree / "labelled_test.txt").unlink()
    with pytest.raises(DataError, match=r"labelled_test\.txt does not exist"):
        build_dataset({"kind": "potsdam", "root": str(tree)}, train=False)
    with pytest.raises(ConfigError, match="classes must be 6 or 3"):
        build_dataset({"kind": "potsdam", "root": str(tree), "classes": 5, "partitions": ["labelled_train"]},
                      train=False)
