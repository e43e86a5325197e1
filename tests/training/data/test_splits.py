"""Near-duplicate grouping and leak-free splits on synthetic twins; split files."""

import json

import cv2
import numpy as np
import pytest

from training.data import build_dataset
from training.data.make_splits import format_json, main
from training.data.splits import (
    build_split_record,
    dominant_class,
    group_indices,
    make_grouped_splits,
    read_split_ids,
    region_descriptor,
    shared_region_pairs,
)
from training.errors import ConfigError, DataError

N = 24


def _texture(rng, side=120):
    """A smooth shading (the same for every image: look-alikes) plus image-specific texture."""
    yy, xx = np.mgrid[0:side, 0:side] / side
    shading = 90 + 60 * xx + 20 * yy
    return np.clip(shading + rng.normal(0, 18, (side, side)), 0, 255)


@pytest.fixture(scope="module")
def twin_tree(tmp_path_factory):
    """24 images; twins: 5 = noisy, brighter copy of 2; 8 = left half of 3 + new right half; 9 = copy of 8
    (so {3, 8, 9} is one group through 8); 11 and 12 are exact copies."""
    root = tmp_path_factory.mktemp("twins")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    images = [_texture(rng) for _ in range(N)]
    images[5] = np.clip(images[2] + 6 + rng.normal(0, 3, images[2].shape), 0, 255)
    images[8][:, :60] = images[3][:, :60]
    images[9] = images[8].copy()
    images[12] = images[11].copy()
    for i, image in enumerate(images):
        assert cv2.imwrite(str(root / "images" / f"{i:03d}.png"), image.astype(np.uint8))
        mask = np.zeros((120, 120), np.uint8)
        mask[:30, :30] = 1 + i % 3  # dominant class 1, 2, 3 in turn
        assert cv2.imwrite(str(root / "masks" / f"{i:03d}.png"), mask)
    return root


def test_twins_and_composites_are_found_and_look_alikes_are_not(twin_tree):
    paths = sorted((twin_tree / "images").glob("*.png"))
    descriptors = np.stack([region_descriptor(p) for p in paths])  # (N, 16, 625)
    assert descriptors.shape == (N, 16, 625)
    pairs = {(i, j) for i, j, _ in shared_region_pairs(descriptors)}
    assert pairs == {(2, 5), (3, 8), (3, 9), (8, 9), (11, 12)}
    groups = [g for g in group_indices(N, [(i, j, 0) for i, j in pairs]) if len(g) > 1]
    assert groups == [[2, 5], [3, 8, 9], [11, 12]]


def test_group_indices_is_union_find():
    assert group_indices(6, [(4, 1, 0), (1, 0, 0), (2, 3, 0)]) == [[0, 1, 4], [2, 3], [5]]


def test_splits_keep_groups_together_and_are_deterministic():
    groups = [[0, 1], [2, 3, 4], [5], [6, 7]] + [[i] for i in range(8, 60)]
    strata = [i % 3 for i in range(60)]
    for seed in range(20):
        s = make_grouped_splits(groups, strata, n_eval=12, n_calibration=5, seed=seed)
        assert len(s["eval"]) in (12, 13, 14) and len(s["calibration"]) in (5, 6, 7)
        assert set(s["calibration"]) <= set(s["train"]) and not set(s["eval"]) & set(s["train"])
        assert sorted(s["train"] + s["eval"]) == list(range(60))
        for g in groups:
            assert len(set(g) & set(s["eval"])) in (0, len(g))
            assert len(set(g) & set(s["calibration"])) in (0, len(g))
    assert make_grouped_splits(groups, strata, 12, 5, seed=3) == make_grouped_splits(groups, strata, 12, 5, seed=3)
    assert make_grouped_splits(groups, strata, 12, 5, seed=3) != make_grouped_splits(groups, strata, 12, 5, seed=4)


def test_splits_are_stratified():
    groups = [[i] for i in range(300)]
    strata = [0] * 150 + [1] * 90 + [2] * 60
    s = make_grouped_splits(groups, strata, n_eval=100, n_calibration=10, seed=0)
    counts = np.bincount([strata[i] for i in s["eval"]], minlength=3)
    assert counts.tolist() == [50, 30, 20]
    assert np.bincount([strata[i] for i in s["calibration"]], minlength=3).tolist() == [5, 3, 2]
    with pytest.raises(ConfigError, match="cannot draw 400"):
        make_grouped_splits(groups, strata, n_eval=400, n_calibration=10, seed=0)


def test_dominant_class():
    mask = np.zeros((4, 4), np.uint8)
    assert dominant_class(mask) == 0
    mask[0, :3], mask[1, :2], mask[2, :] = 2, 3, 255
    assert dominant_class(mask) == 2


def test_cli_writes_a_split_file_mask_folder_reads(twin_tree, tmp_path, capsys):
    out = tmp_path / "splits.json"
    assert main([str(twin_tree), "--out", str(out), "--eval", "6", "--calibration", "3", "--seed", "1"]) == 0
    record = json.loads(out.read_text())
    assert record["seed"] == 1 and record["n_images"] == N
    assert record["near_duplicates"]["groups"] == [["002", "005"], ["003", "008", "009"], ["011", "012"]]
    assert record["counts"] == {name: len(record[name]) for name in ("train", "calibration", "eval")}
    assert not set(record["eval"]) & set(record["train"])
    assert "3 groups" in capsys.readouterr().out
    ds = build_dataset({"kind": "mask_folder", "root": str(twin_tree), "split_file": str(out), "split": "eval"},
                       train=False)
    assert ds.ids == record["eval"]
    assert build_split_record(twin_tree, 6, 3, seed=1) == record
    assert out.read_text().count("\n") > len(record["train"])  # one id a line
    assert '  ["002", "005"],' in out.read_text()  # one group a line


def test_format_json_round_trips():
    value = {"a": [1, 2], "b": {"c": [str(i) for i in range(20)], "d": []}, "e": [[1, "x"], [2]], "f": {}}
    assert json.loads(format_json(value)) == value


def test_read_split_ids_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_split_ids(tmp_path / "nope.json", "train")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match=r"bad\.json is not valid JSON"):
        read_split_ids(bad, "train")
    good = tmp_path / "s.json"
    good.write_text(json.dumps({"seed": 1, "train": ["a"], "eval": ["b"]}))
    with pytest.raises(ConfigError, match="needs a 'split' name; its splits: train, eval"):
        read_split_ids(good, None)
    assert read_split_ids(good, "eval") == ["b"]
    text = tmp_path / "ids.txt"
    text.write_text("a\nb\n")
    with pytest.raises(ConfigError, match="plain id list"):
        read_split_ids(text, "train")
