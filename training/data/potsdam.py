"""``kind: potsdam`` — ISPRS Potsdam in IIC's preprocessed layout (the tiles are not bundled).

IIC's ``code/datasets/segmentation/util/potsdam_prepare.py`` cuts the 38 RGBIR orthophotos (6000x6000) into
400x400 blocks, halves them to 200x200 and saves MATLAB files under shuffled integer names; IIC's
``code/datasets/segmentation/potsdam.py`` reads them::

    root/imgs/<id>.mat     key "img": uint8 (200, 200, 4), channels R, G, B, IR (read with libtiff: true RGB)
    root/gt/<id>.mat       key "gt": int32 (200, 200), 0-5; only for tiles of the 24 labelled orthophotos
    root/unlabelled_train.txt, root/labelled_train.txt, root/labelled_test.txt   one id a line

Classes (from the ISPRS colour code in ``potsdam_prepare.py``): 0 impervious surfaces ("roads"), 1 building,
2 low vegetation, 3 tree, 4 car, 5 clutter. ``classes: 3`` merges them as IIC's Potsdam-3 does: {0, 4} -> 0
(roads and cars), {1, 5} -> 1 (buildings and clutter), {2, 3} -> 2 (vegetation and trees).

Defaults follow IIC's "IID" mode (``code/utils/segmentation/data.py``): training on all three lists, evaluation
on labelled_train + labelled_test; 200 crops (the whole tile); RGBIR input (``channels: 4``; 3 = RGB, 1 = grey
of RGB, both without IR). IIC's "IID+" mode is ``partitions: [unlabelled_train, labelled_train]`` for training
and ``[labelled_test]`` for evaluation (mapping fitted on labelled_train). Training items carry no labels unless
``train_labels`` (IIC's Potsdam loss mask is all ones); tiles without a gt file then get all-255 labels.
IIC's marker file ``debugged.out`` is not required.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io

from training.data.image_dataset import DatasetConfig, ImageDataset
from training.data.image_io import rgb_to_channels
from training.data.registry import register_dataset
from training.errors import ConfigError, DataError

POTSDAM_CLASSES = ("roads", "buildings", "low_vegetation", "trees", "cars", "clutter")
POTSDAM3_CLASSES = ("roads_and_cars", "buildings_and_clutter", "vegetation_and_trees")
# IIC ``Potsdam._fine_to_coarse_dict``
SIX_TO_THREE = (0, 1, 2, 2, 0, 1)
PARTITIONS = ("unlabelled_train", "labelled_train", "labelled_test")


@dataclass
class PotsdamConfig(DatasetConfig):
    channels: int = 4  # 4 = R, G, B, IR; 3 = RGB; 1 = grey of RGB
    crop: int | None = 200
    eval_crop: int | None = 200
    classes: int = 6  # 6, or 3 (IIC's Potsdam-3 merge)
    partitions: tuple[str, ...] = PARTITIONS  # id lists root/<partition>.txt; default by mode (see docstring)


def load_mat(path: Path, key: str) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"Potsdam file {path} does not exist")
    try:
        data = scipy.io.loadmat(str(path))
    except (ValueError, OSError, TypeError) as e:
        raise DataError(f"cannot read MATLAB file {path}: {e}") from e
    if key not in data:
        keys = sorted(k for k in data if not k.startswith("__"))
        raise DataError(f"MATLAB file {path} has no variable {key!r} (it has {keys})")
    return np.asarray(data[key])


@register_dataset("potsdam")
class PotsdamDataset(ImageDataset):
    config_class = PotsdamConfig
    allowed_channels = (1, 3, 4)

    @classmethod
    def default_values(cls, spec: dict[str, Any], *, train: bool) -> dict[str, Any]:
        return {"partitions": list(PARTITIONS) if train else ["labelled_train", "labelled_test"]}

    def __init__(self, config: PotsdamConfig, *, train: bool):
        super().__init__(config, train=train)
        if config.classes not in (3, 6):
            raise ConfigError(f"dataset kind 'potsdam': classes must be 6 or 3, got {config.classes}")
        self.has_labels = True
        self.class_names = list(POTSDAM_CLASSES if config.classes == 6 else POTSDAM3_CLASSES)
        self.lut = np.full(256, 255, dtype=np.uint8)
        self.lut[:6] = np.arange(6) if config.classes == 6 else SIX_TO_THREE
        self.labelled: list[bool] = []  # whether the tile's list promises a gt file
        for partition in config.partitions:
            self._add_partition(partition)

    def _add_partition(self, partition: str) -> None:
        if partition not in PARTITIONS:
            raise ConfigError(f"dataset kind 'potsdam': unknown partition {partition!r}; valid: {list(PARTITIONS)}")
        list_path = self.root / f"{partition}.txt"
        if not list_path.is_file():
            raise DataError(f"Potsdam id list {list_path} does not exist")
        ids = [s.strip() for s in list_path.read_text(encoding="utf-8").splitlines() if s.strip()]
        if not ids:
            raise DataError(f"Potsdam id list {list_path} is empty")
        self.ids.extend(ids)
        self.labelled.extend([partition != "unlabelled_train"] * len(ids))

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        image_path = self.root / "imgs" / f"{self.ids[index]}.mat"
        rgbir = load_mat(image_path, "img")
        if rgbir.dtype != np.uint8 or rgbir.ndim != 3 or rgbir.shape[2] != 4:
            raise DataError(f"{image_path}: 'img' must be uint8 (H, W, 4) RGBIR, got {rgbir.dtype} {rgbir.shape}")
        image = rgbir.astype(np.float32) / np.float32(255.0)  # (H, W, 4) R, G, B, IR
        if self.config.channels != 4:
            image = rgb_to_channels(np.ascontiguousarray(image[:, :, :3]), self.config.channels)  # IR dropped
        if not self.returns_labels:
            return image, None
        return image, self._label(index, image.shape[:2])

    def _label(self, index: int, shape: tuple[int, ...]) -> np.ndarray:
        gt_path = self.root / "gt" / f"{self.ids[index]}.mat"
        if not gt_path.is_file() and not self.labelled[index]:
            return np.full(shape, 255, dtype=np.uint8)  # an unlabelled tile in a labelled dataset
        gt = load_mat(gt_path, "gt")
        if gt.shape != shape:
            raise DataError(f"{gt_path}: 'gt' is {gt.shape} but its image is {shape}")
        if gt.size and (gt.min() < 0 or gt.max() > 5):
            raise DataError(f"{gt_path}: 'gt' holds values outside 0..5 ({gt.min()}..{gt.max()})")
        return self.lut[gt.astype(np.uint8)]
