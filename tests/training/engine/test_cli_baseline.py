"""``training baseline --split-file`` (issue 13.18): the split file belongs to ``--data``; a separate labelled
``--eval-data`` folder is scored whole (or with its own ``--eval-split-file``)."""

import json
import shutil
from pathlib import Path

import pytest

from training.__main__ import main

SAMPLE = Path(__file__).resolve().parents[3] / "samples" / "neu-seg"


@pytest.fixture(scope="module")
def other_line(tmp_path_factory):
    """Another labelled folder: 3 of the sample's holdout frames under new names, and no split file."""
    root = tmp_path_factory.mktemp("other")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    holdout = json.loads((SAMPLE / "splits.json").read_text())["holdout"][:3]
    for i, image_id in enumerate(holdout):
        shutil.copy(next((SAMPLE / "images").glob(f"{image_id}.*")), root / "images" / f"line{i}.jpg")
        shutil.copy(SAMPLE / "masks" / f"{image_id}.png", root / "masks" / f"line{i}.png")
    shutil.copy(SAMPLE / "labels.txt", root / "labels.txt")
    return root


def _baseline(tmp_path, *args):
    out = tmp_path / "out.json"
    code = main(["baseline", "--kind", "kmeans", "--k", "4", "--threads", "1", "--fit-images", "4",
                 "--out", str(out), *args])
    return code, (json.loads(out.read_text()) if out.exists() else None)


def test_the_split_file_of_data_is_not_applied_to_another_eval_folder(tmp_path, other_line):
    split_file = tmp_path / "neu_like.json"  # not beside the data: given by path, as benchmarks/splits/neu_seg.json
    shutil.copy(SAMPLE / "splits.json", split_file)
    code, report = _baseline(tmp_path, "--data", str(SAMPLE), "--split-file", str(split_file), "--fit-split", "train",
                             "--eval-data", str(other_line))
    assert code == 0
    assert report["fit"]["spec"]["split"] == "train" and report["fit"]["spec"]["split_file"] == str(split_file)
    assert report["eval"]["images"] == 3 and "split_file" not in report["eval"]["spec"]


def test_an_eval_folder_takes_its_own_split_file(tmp_path, other_line):
    own = tmp_path / "other_splits.json"
    own.write_text(json.dumps({"scored": ["line0", "line2"]}))
    code, report = _baseline(tmp_path, "--data", str(SAMPLE), "--split-file", str(SAMPLE / "splits.json"),
                             "--fit-split", "train", "--eval-data", str(other_line), "--eval-split-file", str(own),
                             "--eval-split", "scored")
    assert code == 0 and report["eval"]["images"] == 2


def test_data_scored_itself_still_takes_its_splits(tmp_path):
    code, report = _baseline(tmp_path, "--data", str(SAMPLE), "--split-file", str(SAMPLE / "splits.json"),
                             "--fit-split", "train", "--eval-split", "holdout", "--calibration-split", "calibration")
    assert code == 0
    assert (report["fit"]["images"], report["eval"]["images"], report["calibration"]["images"]) == (4, 8, 6)
