"""kind: folder — listing, unreadable files, channels, crops, their randomness, and collation."""

import logging

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from training.data import build_dataset
from training.errors import ConfigError, DataError


def _image(path, h, w, value=None, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (h, w, 3), dtype=np.uint8) if value is None else np.full((h, w, 3), value, np.uint8)
    assert cv2.imwrite(str(path), data)
    return data


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "imgs"
    _image(root / "b.png", 40, 50, seed=1)
    _image(root / "a.jpg", 30, 20, seed=2)  # smaller than the crop: padded
    _image(root / "sub" / "c.BMP", 64, 64, seed=3)
    _image(root / "sub" / "deeper" / "d.tif", 33, 70, seed=4)
    _image(root / ".hidden" / "e.png", 10, 10)
    _image(root / "._f.png", 10, 10)
    (root / "notes.txt").write_text("not an image")
    return root


def test_lists_images_recursively_in_sorted_order(tree):
    ds = build_dataset({"kind": "folder", "root": str(tree)}, train=False)
    assert ds.ids == ["a.jpg", "b.png", "sub/c.BMP", "sub/deeper/d.tif"]
    flat = build_dataset({"kind": "folder", "root": str(tree), "recursive": False}, train=False)
    assert flat.ids == ["a.jpg", "b.png"]
    only_png = build_dataset({"kind": "folder", "root": str(tree), "extensions": ["PNG"]}, train=False)
    assert only_png.ids == ["b.png"]


def test_eval_items_are_whole_images_without_labels(tree):
    ds = build_dataset({"kind": "folder", "root": str(tree), "channels": 1}, train=False)
    item = ds[1]
    assert set(item) == {"image", "index"}
    assert item["image"].shape == (1, 40, 50) and item["image"].dtype == torch.float32
    assert item["index"].dtype == torch.int64 and int(item["index"]) == 1
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    centre = build_dataset({"kind": "folder", "root": str(tree), "eval_crop": 16}, train=False)
    assert centre[1]["image"].shape == (3, 16, 16)


def test_training_crops_have_the_crop_size_and_padding_is_zero(tree):
    ds = build_dataset({"kind": "folder", "root": str(tree), "crop": 32, "seed": 0}, train=True)
    for i in range(len(ds)):
        assert ds[i]["image"].shape == (3, 32, 32)
    small = ds[0]["image"]  # a.jpg is 30x20: 2 rows and 12 columns of padding, the image centred
    assert (small[:, :, :6] == 0).all() and (small[:, :, 26:] == 0).all()
    assert (small[:, :, 6:26].sum(dim=0) > 0).float().mean() > 0.9


def test_dataloader_collates_fixed_size_crops(tree):
    ds = build_dataset({"kind": "folder", "root": str(tree), "crop": 24, "channels": 1}, train=True)
    batch = next(iter(DataLoader(ds, batch_size=4, shuffle=False)))
    assert batch["image"].shape == (4, 1, 24, 24)
    assert batch["index"].tolist() == [0, 1, 2, 3]


def test_seeded_crops_depend_on_seed_epoch_and_index_only(tree):
    spec = {"kind": "folder", "root": str(tree), "crop": 16, "seed": 3}
    a, b = build_dataset(spec, train=True), build_dataset(spec, train=True)
    torch.manual_seed(0)
    first = [a[i]["image"] for i in range(len(a))]
    torch.manual_seed(99)  # the global RNG plays no part
    assert all(torch.equal(x, b[i]["image"]) for i, x in enumerate(first))
    b.set_epoch(1)
    assert not all(torch.equal(x, b[i]["image"]) for i, x in enumerate(first))
    other = build_dataset({**spec, "seed": 4}, train=True)
    assert not all(torch.equal(x, other[i]["image"]) for i, x in enumerate(first))


def test_unseeded_crops_follow_the_global_torch_rng(tree):
    ds = build_dataset({"kind": "folder", "root": str(tree), "crop": 16}, train=True)
    torch.manual_seed(5)
    first = ds[3]["image"]
    torch.manual_seed(5)
    assert torch.equal(ds[3]["image"], first)
    draws = {ds[3]["image"].sum().item() for _ in range(6)}
    assert len(draws) > 1  # the image is 33x70: crops move


def test_empty_folder_is_a_data_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="no image files"):
        build_dataset({"kind": "folder", "root": str(tmp_path / "empty")}, train=True)


def test_unreadable_file_raises_naming_it_or_is_skipped_with_a_logged_count(tree, caplog):
    (tree / "sub" / "broken.png").write_bytes(b"\x00" * 10)
    (tree / "zero.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"broken\.png.*2 of 6"):
        build_dataset({"kind": "folder", "root": str(tree)}, train=True)
    with caplog.at_level(logging.WARNING, logger="training.data.folder"):
        ds = build_dataset({"kind": "folder", "root": str(tree), "on_error": "skip"}, train=True)
    assert len(ds) == 4 and len(ds.skipped) == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipping 2 unreadable image file(s) of 6" in warnings[0].getMessage()
    with pytest.raises(ConfigError, match="on_error"):
        build_dataset({"kind": "folder", "root": str(tree), "on_error": "ignore"}, train=True)


def test_a_file_that_fails_to_decode_later_is_replaced_only_in_skip_mode(tree, caplog):
    truncated = tree / "b.png"
    truncated.write_bytes(truncated.read_bytes()[:60])  # valid signature, broken data
    strict = build_dataset({"kind": "folder", "root": str(tree)}, train=False)
    with pytest.raises(DataError, match=r"b\.png"):
        strict[1]
    lenient = build_dataset({"kind": "folder", "root": str(tree), "on_error": "skip"}, train=False)
    with caplog.at_level(logging.WARNING, logger="training.data.folder"):
        item = lenient[1]
    assert item["image"].shape == (3, 64, 64)  # the next image, sub/c.BMP
    assert any("b.png" in r.getMessage() for r in caplog.records)


def test_train_labels_needs_labels(tree):
    with pytest.raises(ConfigError, match="no labels"):
        build_dataset({"kind": "folder", "root": str(tree), "train_labels": True}, train=True)


def test_seeded_crops_are_the_same_with_worker_processes(tree):
    ds = build_dataset({"kind": "folder", "root": str(tree), "crop": 16, "seed": 7}, train=True)
    ds.set_epoch(2)
    inline = torch.cat([b["image"] for b in DataLoader(ds, batch_size=2)])
    workers = torch.cat([b["image"] for b in DataLoader(ds, batch_size=2, num_workers=2)])
    assert torch.equal(inline, workers)


def test_image_mask_tree_trains_on_images_only(caplog):
    """Pointing a folder dataset at NEU-Seg's layout (images/ + masks/) must not read the label PNGs as images."""
    from tests.conftest import SAMPLE_DIR

    with caplog.at_level("INFO", logger="training.data.folder"):
        ds = build_dataset({"kind": "folder", "root": str(SAMPLE_DIR), "crop": 32}, train=True)
    assert len(ds) == len(list((SAMPLE_DIR / "images").glob("*.jpg"))) == 40
    assert all(i.startswith("images/") for i in ds.ids)
    assert "masks" in caplog.text
    everything = build_dataset({"kind": "folder", "root": str(SAMPLE_DIR), "crop": 32, "exclude_dirs": []},
                               train=True)
    assert len(everything) == 80


def test_masks_beside_their_frames_are_not_frames(tmp_path, caplog):
    """A line's binary masks saved next to the frames (f_mask.png, f-GT.png) or in a mask/ folder must not double an
    epoch; the frames' own type can be chosen with ``extensions`` (no dot needed)."""
    root = tmp_path / "line"
    for i in range(3):
        _image(root / f"f{i}.jpg", 20, 20, seed=i)
        _image(root / f"f{i}_mask.png", 20, 20, value=255)
    _image(root / "b" / "f9.jpg", 20, 20, seed=9)
    _image(root / "b" / "f9-GT.png", 20, 20, value=0)
    _image(root / "b" / "f9_label.bmp", 20, 20, value=0)
    _image(root / "mask" / "f0.png", 20, 20, value=0)
    with caplog.at_level(logging.INFO, logger="training.data.folder"):
        ds = build_dataset({"kind": "folder", "root": str(root)}, train=True)
    assert ds.ids == ["b/f9.jpg", "f0.jpg", "f1.jpg", "f2.jpg"]
    assert "not reading 5 label map(s)" in caplog.text
    kept = build_dataset({"kind": "folder", "root": str(root), "mask_suffixes": []}, train=True)
    assert len(kept) == 9


def test_same_stem_pairs_warn_and_extensions_pick_the_frames(tmp_path, caplog):
    root = tmp_path / "line"
    for i in range(2):
        _image(root / f"f{i}.jpg", 20, 20, seed=i)
        _image(root / f"f{i}.png", 20, 20, value=255)
    with caplog.at_level(logging.WARNING, logger="training.data.folder"):
        assert len(build_dataset({"kind": "folder", "root": str(root)}, train=True)) == 4
    assert "2 image(s) share their name" in caplog.text and "extensions: [jpg]" in caplog.text
    only = build_dataset({"kind": "folder", "root": str(root), "extensions": ["jpg"]}, train=True)
    assert only.ids == ["f0.jpg", "f1.jpg"]
