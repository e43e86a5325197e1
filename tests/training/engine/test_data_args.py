"""``--data`` / ``--eval-data`` / ``--split`` / ``--eval-split`` (issue 13.1): a plain folder of frames trains with
every preset; a preset's own dataset spec (NEU-Seg and its split file) is used only when a split is asked for."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from training.__main__ import main
from training.config import available_presets, load_preset, resolve_run_config
from training.data.registry import dataset_config
from training.errors import ConfigError

SAMPLE = Path(__file__).resolve().parents[3] / "samples" / "neu-seg"
PLUGIN = "tests.training.engine.toy_methods"


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """A line's frames in sub-folders, binary 0/255 masks saved beside them."""
    root = tmp_path_factory.mktemp("line")
    rng = np.random.default_rng(0)
    for i in range(6):
        folder = root / f"cam{i % 2}"
        folder.mkdir(exist_ok=True)
        cv2.imwrite(str(folder / f"f{i}.jpg"), rng.integers(0, 256, (40, 48), dtype=np.uint8))
        cv2.imwrite(str(folder / f"f{i}_mask.png"), np.zeros((40, 48), np.uint8))
    return root


def _preset_image_keys(spec, train):
    _, config = dataset_config({**spec, "root": "/x"}, train=train)
    return {"crop": config.crop, "channels": config.channels}


@pytest.mark.parametrize("name", available_presets())
def test_data_is_a_plain_folder_of_frames_with_every_preset(name, frames):
    preset = load_preset(name)
    wanted = _preset_image_keys(preset["data"]["train"], train=True)
    if wanted["channels"] not in (1, 3):  # Potsdam's RGBIR tiles: a folder of frames cannot give them
        with pytest.raises(ConfigError, match=r"--data reads a plain folder .* --set data.train.root=DIR"):
            resolve_run_config(preset, data=str(frames))
        return
    run = resolve_run_config(preset, data=str(frames))
    assert run.train_data.spec["kind"] == "folder" and run.train_data.spec["root"] == str(frames)
    assert {k: getattr(run.train_data.dataset_config, k) for k in wanted} == wanted  # the preset's crop/channels
    assert "split" not in run.train_data.spec and "split_file" not in run.train_data.spec


def test_readme_command_builds_on_a_plain_folder_and_the_bundled_sample(frames):
    """`fit --preset iic_neu --data /line/frames --eval-data samples/neu-seg` failed: the NEU split file was applied."""
    run = resolve_run_config(load_preset("iic_neu"), data=str(frames), eval_data=str(SAMPLE))
    train = run.train_data.build()
    assert len(train) == 6  # the masks beside the frames are not frames
    crop = load_preset("iic_neu")["data"]["train"]["crop"]
    assert train[0]["image"].shape == (1, crop, crop)  # iic_neu's crop and channels
    evaluation = run.eval_data.build()
    assert len(evaluation) == 40 and evaluation.class_names == ["background", "inclusion", "patches", "scratches"]
    assert evaluation[0]["image"].shape[0] == 1 and "label" in evaluation[0]


def test_a_split_reads_the_presets_own_dataset_spec():
    ac = load_preset("ac_scratch_cpu")  # mask_folder, split from the data's own splits.json
    run = resolve_run_config(ac, data=str(SAMPLE), split="train", eval_data=str(SAMPLE), eval_split="holdout")
    assert run.train_data.spec == {**ac["data"]["train"], "root": str(SAMPLE), "split": "train"}
    assert len(run.train_data.build()) == 32 and len(run.eval_data.build()) == 8
    neu = resolve_run_config(load_preset("iic_neu"), data="/neu", split="train", eval_data="/neu",
                             eval_split="calibration")
    assert neu.train_data.spec["split_file"] == "benchmarks/splits/neu_seg.json"
    assert neu.eval_data.spec["split"] == "calibration" and len(neu.eval_data.spec["class_names"]) == 4
    with pytest.raises(ConfigError, match=r"--split train: the preset's data.train is kind 'cocostuff', which has "
                                          "no splits"):
        resolve_run_config(load_preset("iic_cocostuff3"), data="/coco", split="train")


@pytest.mark.parametrize("name", [n for n in available_presets() if n.endswith("_neu")])
def test_every_neu_preset_reads_the_neu_split_file_when_a_split_is_asked_for(name):
    """`fit --preset anomaly_neu --data ../shared/data/neu-seg --split train` (README) looked for neu-seg/splits.json:
    the baseline presets did not name the split file the method presets name."""
    run = resolve_run_config(load_preset(name), data="/neu", split="train")
    assert run.train_data.spec["split_file"] == "benchmarks/splits/neu_seg.json"
    assert run.train_data.spec["split"] == "train"


def _toy_preset(tmp_path, eval_spec):
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump({
        "method": "toy_seg", "method_config": {},
        "data": {"train": {"kind": "mask_folder", "split": "train", "crop": 8, "channels": 1}, "eval": eval_spec},
        "train": {"epochs": 1, "batch_size": 2, "num_workers": 0}}))
    return path


def test_eval_data_is_optional_with_a_message_and_data_is_required(tmp_path, frames, caplog, capsys):
    preset = _toy_preset(tmp_path, {"kind": "mask_folder", "root": None, "split": "holdout", "channels": 1})
    code = main(["fit", "--plugin", PLUGIN, "--no-progress", "--preset", str(preset), "--data", str(frames),
                 "--out", str(tmp_path / "run")])
    assert code == 0
    assert "no --eval-data was given: training without evaluation" in caplog.text
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data"]["eval"] is None
    capsys.readouterr()
    assert main(["fit", "--plugin", PLUGIN, "--preset", str(preset), "--out", str(tmp_path / "other")]) == 2
    assert "give the training frames: --data DIR" in capsys.readouterr().err


def test_whole_frames_in_two_orientations(tmp_path, capsys):
    """README's new-line command (`fit --preset kmeans_lite_neu --data FRAMES`) stopped inside torch.stack on a
    folder of 320x480 and 480x320 frames (CrackForest). The whole-frame presets take one frame a batch; a batch of
    several is a DataError naming the sizes and the two ways out, without a worker's traceback."""
    rng = np.random.default_rng(0)
    (tmp_path / "frames").mkdir()
    for i, shape in enumerate([(40, 48), (48, 40)] * 2):
        cv2.imwrite(str(tmp_path / "frames" / f"f{i}.png"), rng.integers(0, 256, shape, dtype=np.uint8))
    assert load_preset("kmeans_neu")["train"]["batch_size"] == 1
    common = ["fit", "--preset", "kmeans_neu", "--no-progress", "--data", str(tmp_path / "frames")]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    capsys.readouterr()
    assert main([*common, "--set", "train.batch_size=2", "--set", "train.num_workers=1",
                 "--out", str(tmp_path / "two")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: data.train: frames of different sizes (40x48, 48x40) in one batch") and (
        "data.train.crop" in err and "train.batch_size=1" in err)
    assert "Traceback" not in err and "worker" not in err
