"""build_dataset: kinds, spec keys and their errors."""

import pytest

from training.data import build_dataset, dataset_kinds, register_dataset
from training.data.folder import FolderDataset
from training.errors import ConfigError, DataError


def test_all_kinds_are_registered():
    assert dataset_kinds() == ["cocostuff", "folder", "mask_folder", "potsdam", "severstal"]


def test_unknown_kind_lists_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match="unknown dataset kind 'foldr'; valid kinds: cocostuff, folder, mask_folder"):
        build_dataset({"kind": "foldr", "root": str(tmp_path)}, train=True)
    with pytest.raises(ConfigError, match=r"no 'kind'.*folder"):
        build_dataset({"root": str(tmp_path)}, train=True)
    with pytest.raises(ConfigError, match="mapping"):
        build_dataset(["folder"], train=True)  # type: ignore[arg-type]


def test_unknown_key_lists_the_valid_fields(tmp_path):
    with pytest.raises(ConfigError, match=r"'folder'.*\['crop_size'\].*valid fields: .*'crop'.*'on_error'"):
        build_dataset({"kind": "folder", "root": str(tmp_path), "crop_size": 64}, train=True)


def test_bad_values_and_missing_root(tmp_path):
    with pytest.raises(ConfigError, match="'root' is required"):
        build_dataset({"kind": "folder", "root": None}, train=True)
    with pytest.raises(ConfigError, match="channels must be one of \\[1, 3\\]"):
        build_dataset({"kind": "folder", "root": str(tmp_path), "channels": 4}, train=True)
    with pytest.raises(ConfigError, match="crop must be a positive"):
        build_dataset({"kind": "folder", "root": str(tmp_path), "crop": 0}, train=True)
    with pytest.raises(ConfigError, match="crop_mode"):
        build_dataset({"kind": "folder", "root": str(tmp_path), "crop_mode": "middle"}, train=True)
    with pytest.raises(ConfigError, match=r"crop: .big. does not fit int"):
        build_dataset({"kind": "folder", "root": str(tmp_path), "crop": "big"}, train=True)
    with pytest.raises(DataError, match="does-not-exist"):
        build_dataset({"kind": "folder", "root": str(tmp_path / "does-not-exist")}, train=True)


def test_a_kind_name_cannot_be_taken_twice():
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("folder")(type("Other", (FolderDataset,), {}))


def test_paths_may_be_path_objects(sample_dir):
    ds = build_dataset({"kind": "mask_folder", "root": sample_dir, "split_file": sample_dir / "splits.json",
                        "split": "holdout"}, train=False)
    assert len(ds) == 8
