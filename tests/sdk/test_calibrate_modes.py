"""Every mapping mode of ``usseg calibrate`` for any number of classes (the grey model has 4 clusters), and the
manual mapping ``--map CLUSTER=CLASS,...`` (unmapped clusters -> background), with its errors."""

from __future__ import annotations

import re

import cv2
import numpy as np
import pytest

from usseg_sdk import Segmenter, SegmenterConfig
from usseg_sdk.cli import main

CPU = SegmenterConfig(device="cpu")
# The masks are a relabelling of the model's own clusters, one per class count.
RELABEL = {2: [0, 1, 1, 0], 3: [0, 2, 1, 2], 4: [3, 1, 0, 2], 6: [5, 0, 2, 4]}


@pytest.fixture
def labelled(models, tmp_path):
    seg = Segmenter(models["grey"], config=CPU)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (24, 24), dtype=np.uint8) for _ in range(3)]
    clusters = [seg.predict(f).clusters for f in frames]

    def write(n_classes: int):
        root = tmp_path / f"c{n_classes}"
        for folder in ("images", "masks"):
            (root / folder).mkdir(parents=True)
        for i, (frame, c) in enumerate(zip(frames, clusters, strict=True)):
            cv2.imwrite(str(root / "images" / f"f{i}.png"), frame)
            cv2.imwrite(str(root / "masks" / f"f{i}.png"), np.asarray(RELABEL[n_classes], np.uint8)[c])
        names = ",".join(f"c{i}" for i in range(n_classes))
        return ["--images", str(root / "images"), "--masks", str(root / "masks"), "--class-names", names]

    return write


def _calibrate(models, tmp_path, *extra) -> Segmenter:
    out = tmp_path / "cal"
    rc = main(["calibrate", "-m", str(models["grey"].parent), "--out", str(out), "--device", "cpu", *extra])
    assert rc == 0
    return Segmenter(out, config=CPU)


@pytest.mark.parametrize("n_classes", [2, 3, 4, 6])
@pytest.mark.parametrize("mode", ["auto", "hungarian", "many_to_one", "miou"])
def test_every_mode_for_any_number_of_classes(models, tmp_path, labelled, capsys, mode, n_classes):
    seg = _calibrate(models, tmp_path, *labelled(n_classes), "--mode", mode)
    capsys.readouterr()
    meta, want = seg.meta, RELABEL[n_classes]
    assert meta.n_classes == n_classes and meta.mapping.kind == (mode if mode != "auto" else
                                                                  "hungarian" if n_classes >= 4 else "many_to_one")
    if meta.mapping.kind == "hungarian" and n_classes < 4:
        # one cluster per class (its best), the other clusters to the background class 0
        for c in range(1, n_classes):
            assert meta.cluster_to_class.count(c) == 1 and want[meta.cluster_to_class.index(c)] == c
        assert all(c == 0 or want[k] == c for k, c in enumerate(meta.cluster_to_class))
    else:
        assert meta.cluster_to_class == want


def test_a_manual_mapping_needs_no_frames(models, tmp_path, capsys):
    seg = _calibrate(models, tmp_path, "--map", "3=scratches, 1=scratches", "--class-names", "ok,scratches,pits")
    capsys.readouterr()
    assert seg.meta.cluster_to_class == [0, 1, 0, 1] and seg.class_names == ["ok", "scratches", "pits"]
    assert seg.meta.mapping.kind == "manual" and seg.meta.mapping.n_images == 0 and seg.meta.mapping.metrics == {}
    frame = np.random.default_rng(1).integers(0, 256, (16, 16), dtype=np.uint8)
    res = seg.predict(frame)
    np.testing.assert_array_equal(res.labels, np.asarray([0, 1, 0, 1], np.uint8)[res.clusters])


def test_a_manual_mapping_names_its_classes_and_is_scored_on_frames(models, tmp_path, labelled, capsys):
    seg = _calibrate(models, tmp_path, "--map", "2=pits,3=scratches,0=1", *labelled(3)[:4])
    out = capsys.readouterr().out
    assert seg.class_names == ["background", "pits", "scratches"] and seg.meta.cluster_to_class == [1, 0, 1, 2]
    assert seg.meta.mapping.kind == "manual" and seg.meta.mapping.n_images == 3
    assert "pixel_accuracy" in seg.meta.mapping.metrics and "(manual)" in out


@pytest.mark.parametrize("spec, extra, match", [
    ("9=x", [], r"cluster 9 .*4 clusters \(0\.\.3\)"),
    ("1=nope", ["--class-names", "ok,bad"], r"class 'nope' .*\['ok', 'bad'\]"),
    ("1=5", ["--class-names", "ok,bad"], r"class id 5 .*0\.\.1"),
    ("1", [], r"'1' is not CLUSTER=CLASS"),
    ("a=x", [], r"'a' .*not a cluster id"),
    ("1=a,1=b", [], r"cluster 1 .*both 'a' and 'b'"),
    ("1=a", ["--background", "-1"], r"clusters \[0, 2, 3\] .*no background class"),
    ("1=a", ["--mode", "miou"], r"--map or --mode"),
])
def test_manual_mapping_errors(models, tmp_path, capsys, spec, extra, match):
    rc = main(["calibrate", "-m", str(models["grey"].parent), "--out", str(tmp_path / "cal"), "--device", "cpu",
               "--map", spec, *extra])
    assert rc == 2
    assert re.search(match, capsys.readouterr().err)


def test_fitting_needs_frames(models, tmp_path, capsys):
    rc = main(["calibrate", "-m", str(models["grey"].parent), "--out", str(tmp_path / "cal"), "--device", "cpu"])
    assert rc == 2 and "--images and --masks" in capsys.readouterr().err
