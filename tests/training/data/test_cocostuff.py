"""kind: cocostuff — label tables and both protocols on a generated tree in the published layout."""

import cv2
import numpy as np
import pytest

from training.data import build_dataset
from training.data.cocostuff import COARSE_NAMES, FINE_TO_COARSE, N_THING_COARSE, label_lut
from training.errors import ConfigError, DataError

# Fine PNG values (COCO-Stuff label id - 1) and their names in nightrome/cocostuff labels.txt (id = value + 1).
PERSON, HAIR_BRUSH, CARPET, SAND, SKY, TREE, WOOD = 0, 90, 100, 153, 156, 168, 181
STRIPES = (PERSON, CARPET, SAND, SKY, TREE)  # five vertical stripes of the generated label maps


def _write_split(root, partition, ids, size):
    (root / "images" / partition).mkdir(parents=True)
    (root / "annotations" / partition).mkdir(parents=True)
    (root / "curated" / partition).mkdir(parents=True)
    h, w = size
    for n, image_id in enumerate(ids):
        image = np.full((h, w, 3), (10 * n, 100, 200), np.uint8)
        assert cv2.imwrite(str(root / "images" / partition / f"{image_id}.jpg"), image)
        label = np.zeros((h, w), np.uint8)
        for k, value in enumerate(STRIPES):
            label[:, k * w // 5 : (k + 1) * w // 5] = value
        label[: h // 10] = 255  # unlabelled rows at the top
        assert cv2.imwrite(str(root / "annotations" / partition / f"{image_id}.png"), label)
    for name in ("Coco164kFull_Stuff_Coarse_7.txt", "Coco164kFew_Stuff_6.txt"):
        (root / "curated" / partition / name).write_text("".join(f"{i}\n" for i in ids))


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "CocoStuff164k"
    _write_split(root, "train2017", ["000000000009", "000000000025", "000000000030"], (400, 500))
    _write_split(root, "val2017", ["000000000139", "000000000285"], (480, 400))
    return root


def test_fine_to_coarse_table_facts():
    table = np.asarray(FINE_TO_COARSE)
    assert table.shape == (182,)
    assert (table[:91] < N_THING_COARSE).all() and (table[91:] >= N_THING_COARSE).all()
    assert set(table.tolist()) == set(range(27))
    assert len(COARSE_NAMES) == 27
    named = {PERSON: "person", HAIR_BRUSH: "indoor", CARPET: "floor", SAND: "ground", SKY: "sky", TREE: "plant",
             WOOD: "solid"}
    for fine, coarse in named.items():
        assert COARSE_NAMES[table[fine]] == coarse, fine


@pytest.mark.parametrize(
    ("classes", "expected"),
    [
        (27, {PERSON: 9, CARPET: 13, SAND: 21, SKY: 23, TREE: 22}),
        (15, {PERSON: 255, CARPET: 1, SAND: 9, SKY: 11, TREE: 10}),  # stuff only: coarse - 12, things ignored
        (3, {PERSON: 255, CARPET: 255, SAND: 2, SKY: 0, TREE: 1}),  # sky, plant, ground
    ],
)
def test_label_mapping_per_class_count(tree, classes, expected):
    spec = {"kind": "cocostuff", "root": str(tree), "classes": classes, "scale": 1.0, "eval_crop": None}
    ds = build_dataset(spec, train=False)
    assert len(ds.class_names) == classes
    label = ds[0]["label"].numpy()
    assert label.shape == (400, 500) and (label[:40] == 255).all()
    for k, fine in enumerate(STRIPES):
        assert (label[40:, k * 100 : (k + 1) * 100] == expected[fine]).all(), fine
    assert (label_lut(classes)[[255]] == 255).all()


def test_iic_protocol_defaults(tree):
    ev = build_dataset({"kind": "cocostuff", "root": str(tree)}, train=False)
    assert len(ev) == 5 and ev.ids[0] == "train2017/000000000009" and ev.ids[-1] == "val2017/000000000285"
    item = ev[4]
    assert item["image"].shape == (3, 128, 128) and item["label"].shape == (128, 128)  # 0.33 x, centre 128
    np.testing.assert_allclose(item["image"][:, 64, 64].numpy(), np.array([200, 100, 10]) / 255, atol=0.02)  # RGB
    tr = build_dataset({"kind": "cocostuff", "root": str(tree), "seed": 0}, train=True)
    item = tr[0]
    assert item["image"].shape == (3, 128, 128) and "label" in item  # IIC's loss mask needs the labels
    assert set(np.unique(item["label"].numpy())) <= {1, 9, 10, 11, 255}


def test_picie_protocol_defaults(tree):
    ev = build_dataset({"kind": "cocostuff", "root": str(tree), "protocol": "picie"}, train=False)
    assert ev.ids == ["val2017/000000000139", "val2017/000000000285"] and len(ev.class_names) == 27
    item = ev[0]
    assert item["image"].shape == (3, 320, 320) and item["label"].shape == (320, 320)
    assert set(np.unique(item["label"].numpy())) <= {9, 13, 21, 22, 23, 255}
    tr = build_dataset({"kind": "cocostuff", "root": str(tree), "protocol": "picie"}, train=True)
    assert len(tr) == 3 and tr[0]["image"].shape == (3, 640, 640) and "label" not in tr[0]
    assert tr.config.short_side == 640 and ev.config.short_side == 320


def test_curated_dir_and_custom_list(tree, tmp_path):
    lists = tmp_path / "lists"
    (lists / "val2017").mkdir(parents=True)
    (lists / "val2017" / "Coco164kFull_Stuff_Coarse_7.txt").write_text("000000000285\n")
    (lists / "val2017" / "mine.txt").write_text("000000000139\n000000000285\n")
    spec = {"kind": "cocostuff", "root": str(tree), "curated_dir": str(lists), "partitions": ["val2017"]}
    assert build_dataset(spec, train=False).ids == ["val2017/000000000285"]
    assert len(build_dataset({**spec, "id_list": "mine.txt"}, train=False)) == 2


def test_errors_name_the_file(tree):
    with pytest.raises(DataError, match=r"curated/train2017/Coco164kFull_Stuff_Coarse_8\.txt does not exist"):
        build_dataset({"kind": "cocostuff", "root": str(tree), "curated_version": 8}, train=False)
    (tree / "images" / "val2017" / "000000000139.jpg").unlink()
    with pytest.raises(DataError, match=r"000000000139\.jpg \(listed in .*val2017"):
        build_dataset({"kind": "cocostuff", "root": str(tree)}, train=False)
    label_path = tree / "annotations" / "train2017" / "000000000009.png"
    label = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
    label[200, 200] = 200
    cv2.imwrite(str(label_path), label)
    ds = build_dataset({"kind": "cocostuff", "root": str(tree), "partitions": ["train2017"]}, train=False)
    with pytest.raises(DataError, match=r"000000000009\.png holds values \[200\]"):
        ds[0]
    with pytest.raises(ConfigError, match="protocol must be 'iic' or 'picie'"):
        build_dataset({"kind": "cocostuff", "root": str(tree), "protocol": "stego"}, train=False)
    with pytest.raises(ConfigError, match="classes must be 3, 15 or 27"):
        build_dataset({"kind": "cocostuff", "root": str(tree), "classes": 91}, train=False)
