"""kind: severstal — a Kaggle-layout tree made from the bundled NEU-Seg masks with the RLE codec."""

import shutil

import cv2
import numpy as np
import pytest

from training.data import build_dataset
from training.errors import DataError
from usseg_sdk.rle import label_map_to_rows, write_csv


@pytest.fixture
def tree(tmp_path, sample_dir):
    """Five NEU-Seg images as ``train_images/<id>.jpg``; the first four have rows in train.csv (classes 1-3
    shifted to 2-4 so class 4 occurs), the fifth has none (all background)."""
    root = tmp_path / "severstal"
    (root / "train_images").mkdir(parents=True)
    ids = []
    for cls in (1, 2, 3, 1, 2):  # one image per class first, so every defect class occurs
        ids.append(next(p.stem for p in sorted((sample_dir / "masks").glob("*.png"))
                        if p.stem not in ids and cls in cv2.imread(str(p), cv2.IMREAD_UNCHANGED)))
    rows, masks = [], {}
    for n, image_id in enumerate(ids):  # the last one gets no rows
        shutil.copy(sample_dir / "images" / f"{image_id}.jpg", root / "train_images" / f"{image_id}.jpg")
        mask = cv2.imread(str(sample_dir / "masks" / f"{image_id}.png"), cv2.IMREAD_UNCHANGED)
        mask = np.where(mask > 0, mask + 1, 0).astype(np.uint8)
        masks[f"{image_id}.jpg"] = mask if n < 4 else np.zeros_like(mask)
        if n < 4:
            rows += label_map_to_rows(f"{image_id}.jpg", mask)
    write_csv(root / "train.csv", rows)
    return root, masks


def ids_without_rows(masks):
    (only,) = [k for k, m in masks.items() if not m.any()]
    return only


def test_labels_decode_to_the_masks_that_were_encoded(tree):
    root, masks = tree
    ds = build_dataset({"kind": "severstal", "root": str(root)}, train=False)
    assert ds.ids == sorted(masks)
    assert ds.class_names == ["background", "defect_1", "defect_2", "defect_3", "defect_4"]
    seen = set()
    for i, image_id in enumerate(ds.ids):
        item = ds[i]
        assert item["image"].shape == (1, 200, 200)  # grey by default
        np.testing.assert_array_equal(item["label"].numpy(), masks[image_id])
        seen |= set(np.unique(masks[image_id]).tolist())
    assert seen == {0, 2, 3, 4}
    empty = ds.ids.index(ids_without_rows(masks))
    assert not (ds[empty]["label"] != 0).any()  # the image without rows is all background


def test_training_crops_and_split_selection(tree):
    root, masks = tree
    some = sorted(masks)[1:3]
    ds = build_dataset({"kind": "severstal", "root": str(root), "ids": some, "crop": 128, "train_labels": True},
                       train=True)
    assert ds.ids == some
    item = ds[0]
    assert item["image"].shape == (1, 128, 128) and item["label"].shape == (128, 128)


def test_malformed_csv_and_overlapping_rows_are_data_errors(tree):
    root, masks = tree
    (root / "train.csv").write_text("ImageId_ClassId,EncodedPixels\nx.jpg_1,1 3\n")
    with pytest.raises(DataError, match=r"train\.csv is malformed: .*header"):
        build_dataset({"kind": "severstal", "root": str(root)}, train=False)
    first = sorted(masks)[0]
    (root / "train.csv").write_text(f"ImageId,ClassId,EncodedPixels\n{first},1,1 10\n{first},2,5 10\n")
    ds = build_dataset({"kind": "severstal", "root": str(root)}, train=False)
    with pytest.raises(DataError, match=rf"train\.csv: rows of image {first}: .*claimed by class 1 and class 2"):
        ds[0]
    (root / "train.csv").unlink()
    with pytest.raises(DataError, match=r"train\.csv does not exist"):
        build_dataset({"kind": "severstal", "root": str(root)}, train=False)
