"""Calibration masks: the class count read from masks (usseg_sdk.calibrate.max_label), binary 0/255 and
anti-aliased masks read as background/defect (not 255 = ignore, not 254 classes), and a calibration that names no
cluster a defect while the masks hold defects refused with what to try."""

from __future__ import annotations

import json
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from usseg_sdk import Segmenter, SegmenterConfig
from usseg_sdk.calibrate import fit
from usseg_sdk.cli import main
from usseg_sdk.errors import CalibrationError
from usseg_sdk.masks import detect_mask_encoding, max_label


def _mask(path, values):
    cv2.imwrite(str(path), np.asarray(values, np.uint8).reshape(2, 2))
    return path


def test_largest_class_id_over_all_masks_without_the_ignore_index(tmp_path):
    pairs = [(tmp_path / "a.jpg", _mask(tmp_path / "a.png", [0, 1, 255, 0])),
             (tmp_path / "b.jpg", _mask(tmp_path / "b.png", [0, 3, 0, 2])),
             (tmp_path / "c.jpg", _mask(tmp_path / "c.png", [255, 255, 255, 255]))]
    assert max_label(pairs, ignore_index=255) == 3
    assert max_label(pairs, ignore_index=3) == 255


def test_an_unreadable_mask_is_named(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(CalibrationError, match=r"cannot read mask .*bad\.png"):
        max_label([(tmp_path / "bad.jpg", bad)], ignore_index=255)


# -- how mask values become classes ---------------------------------------------------------------------------
def _pairs(tmp_path, masks):
    out = []
    for i, m in enumerate(masks):
        path = tmp_path / f"m{i}.png"
        cv2.imwrite(str(path), np.asarray(m, np.uint8))
        out.append((tmp_path / f"m{i}.jpg", path))
    return out


def _binary(seed=0, size=(40, 40)):
    mask = np.zeros(size, np.uint8)
    r = np.random.default_rng(seed)
    y, x = r.integers(5, size[0] - 15), r.integers(5, size[1] - 15)
    mask[y:y + 10, x:x + 10] = 255
    return mask


def test_class_id_masks_stay_class_ids(tmp_path):
    enc = detect_mask_encoding(_pairs(tmp_path, [[[0, 1], [2, 255]], [[3, 0], [0, 0]]]))
    assert enc.kind == "class_ids"
    assert max_label(_pairs(tmp_path, [[[0, 1], [2, 255]]]), 255) == 2


def test_zero_and_255_masks_are_binary(tmp_path):
    enc = detect_mask_encoding(_pairs(tmp_path, [_binary(0), _binary(1)]))
    assert enc.kind == "binary" and enc.threshold == 128 and "0 and 255" in enc.reason
    assert enc.apply(np.array([0, 255], np.uint8)).tolist() == [0, 1]


def test_anti_aliased_masks_are_binarised(tmp_path):
    soft = [cv2.GaussianBlur(_binary(s), (3, 3), 0) for s in range(3)]
    assert len(np.unique(np.stack(soft))) > 4  # anti-aliased: values between 0 and 255 along the edges
    enc = detect_mask_encoding(_pairs(tmp_path, soft))
    assert enc.kind == "binary" and enc.threshold == 128 and "anti-aliased" in enc.reason


def test_an_explicit_threshold_wins(tmp_path):
    enc = detect_mask_encoding(_pairs(tmp_path, [[[0, 1], [2, 3]]]), threshold=2)
    assert enc.kind == "binary" and enc.apply(np.array([0, 1, 2, 3], np.uint8)).tolist() == [0, 0, 1, 1]


def test_grey_pictures_as_masks_are_refused(tmp_path):
    grey = np.random.default_rng(0).integers(0, 256, (20, 20), dtype=np.uint8)
    with pytest.raises(CalibrationError, match=r"neither class ids nor a binary mask.*--mask-threshold"):
        detect_mask_encoding(_pairs(tmp_path, [grey]))


def test_class_names_other_than_two_keep_class_ids(tmp_path):
    enc = detect_mask_encoding(_pairs(tmp_path, [_binary(0)]), n_names=4)
    assert enc.kind == "class_ids"


# -- end to end -------------------------------------------------------------------------------------------------
def _line_with_binary_masks(models, tmp_path, defect_cluster=2, blur=False):
    seg = Segmenter(models["grey"], config=SegmenterConfig(device="cpu"))
    rng = np.random.default_rng(0)
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    for i in range(3):  # smooth frames: the model's clusters are blobs, as defects are
        noise = cv2.GaussianBlur(rng.integers(0, 256, (32, 32)).astype(np.float32), (0, 0), 3)
        frame = cv2.normalize(noise, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
        mask = np.where(seg.predict(frame).clusters == defect_cluster, 255, 0).astype(np.uint8)
        if blur:
            mask = cv2.GaussianBlur(mask, (3, 3), 0.6)
        cv2.imwrite(str(tmp_path / "images" / f"f{i}.png"), frame)
        cv2.imwrite(str(tmp_path / "masks" / f"f{i}.png"), mask)
    return ["calibrate", "-m", str(models["grey"].parent), "--images", str(tmp_path / "images"), "--masks",
            str(tmp_path / "masks"), "--out", str(tmp_path / "cal"), "--device", "cpu"]


@pytest.mark.parametrize("blur", [False, True])
def test_usseg_calibrate_on_binary_masks_names_the_defect(models, tmp_path, capsys, blur):
    assert main(_line_with_binary_masks(models, tmp_path, blur=blur)) == 0
    out = capsys.readouterr().out
    assert "masks read as binary" in out and ("anti-aliased" if blur else "only 0 and 255") in out
    meta = Segmenter(tmp_path / "cal", config=SegmenterConfig(device="cpu")).meta
    assert meta.class_names == ["background", "defect"] and meta.cluster_to_class[2] == 1
    report = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    assert report["masks"]["kind"] == "binary"


class _FakeSeg:
    """Predicts fixed cluster maps, one per frame, for fit()."""

    def __init__(self, clusters):
        self.clusters = iter(clusters)
        self.meta = SimpleNamespace(n_clusters=2, input=SimpleNamespace(channels=1))

    def predict(self, frame):
        c = next(self.clusters)
        return SimpleNamespace(clusters=c, shape=c.shape)


def test_a_mapping_without_a_defect_is_refused_with_what_to_try(tmp_path):
    """Each cluster holds a little of the defect and more background: majority voting names both background."""
    clusters = np.zeros((20, 20), np.uint8)
    clusters[:, 10:] = 1
    mask = np.zeros((20, 20), np.uint8)
    mask[:3, 8:12] = 255  # 12 defect pixels, 6 in each cluster
    cv2.imwrite(str(tmp_path / "f.png"), np.zeros((20, 20), np.uint8))
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    pairs = [(tmp_path / "f.png", tmp_path / "m.png")]
    enc = detect_mask_encoding(pairs)
    with pytest.raises(CalibrationError, match=r"names no cluster a defect.*12 defect pixels.*--mode miou.*clusters"):
        fit(_FakeSeg([clusters]), pairs, 2, "many_to_one", class_names=["background", "defect"], masks=enc)

