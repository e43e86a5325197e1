"""``kind: cocostuff`` — COCO-Stuff-164k as the IIC and PiCIE papers evaluate it (images are not bundled).

Layout (IIC ``code/datasets/segmentation/cocostuff.py`` ``_Coco164kCurated*``; PiCIE
``data/coco_{train,eval}_dataset.py`` use the same)::

    root/images/{train2017,val2017}/<id>.jpg
    root/annotations/{train2017,val2017}/<id>.png     fine labels 0..181 (COCO-Stuff "stuffthingmaps"), 255 unlabelled
    root/curated/{train2017,val2017}/<list>.txt       one image id a line

Curated lists: ``Coco164kFew_Stuff_6.txt`` for COCO-Stuff-3 and ``Coco164kFull_Stuff_Coarse_7.txt`` for
COCO-Stuff-15 and PiCIE's 27 classes (IIC ``examples/commands.txt`` runs 555 and 512: curated versions 6 and 7;
PiCIE loads the version-7 list). ``curated_dir`` points elsewhere, e.g. at the shared copy of the lists.

Labels (fine -> coarse table below; ``classes``):

* 27: all coarse classes, 0-11 things, 12-26 stuff (PiCIE: things and stuff, K = 27).
* 15: stuff only, coarse - 12; thing and unlabelled pixels are ignored (255) — IIC's COCO-Stuff(-15).
* 3: sky-stuff -> 0, plant-stuff -> 1, ground-stuff -> 2, everything else ignored — IIC's COCO-Stuff-3.

Protocols (``protocol``; every value below is only a default, any spec key overrides it):

* ``iic`` (docs/METHODS.md §1.2, §2.6): pre-scale 0.33 (INTER_LINEAR / INTER_NEAREST), training = random 128 crops
  (zero-padded if smaller) with labels (IIC's loss mask keeps stuff pixels only), evaluation = centre 128 crop;
  "IID" mode: train2017 + val2017 curated lists for training and for evaluation alike.
* ``picie`` (docs/METHODS.md §5.4, §5.6): training = shorter side 640 + centre 640 crop (PiCIE's base transform; its
  random resized crops are the method's equivariant views); evaluation = shorter side 320 + centre 320 crop
  (PiCIE's ``round((w - res) / 2)`` offset); train2017 for training, val2017 for evaluation.

Departures from IIC: images are RGB (IIC fed cv2's BGR arrays as RGB; docs/METHODS.md §I7); padded
label pixels are ignored (IIC padded labels with fine class 0); the pre-scaled image stays float (IIC truncated
it back to uint8 for PIL's colour jitter, a loss of under 1/255).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.data.image_dataset import DatasetConfig, ImageDataset
from training.data.image_io import read_image, read_label
from training.data.registry import register_dataset
from training.errors import ConfigError, DataError

# Coarse (27) classes in IIC's index order (``cocostuff_fine_to_coarse.py`` ``_sorted_coarse_names``): things first.
COARSE_NAMES = (
    "electronic", "appliance", "food", "furniture", "indoor", "kitchen", "accessory", "animal", "outdoor", "person",
    "sports", "vehicle",  # 0-11: things
    "ceiling", "floor", "food", "furniture", "rawmaterial", "textile", "wall", "window", "building", "ground",
    "plant", "sky", "solid", "structural", "water",  # 12-26: stuff
)  # fmt: skip
N_THING_COARSE = 12

# Fine (0..181, the PNG value = COCO-Stuff label id - 1) -> coarse index. Facts from IIC's
# ``code/datasets/segmentation/util/out/fine_to_coarse_dict.pickle.txt`` (derived there from COCO-Stuff's label
# hierarchy), cross-checked against the names in nightrome/cocostuff ``labels.txt``. Ten entries a row.
FINE_TO_COARSE = (
    9, 11, 11, 11, 11, 11, 11, 11, 11, 8,  # 0-9: person, bicycle ... boat, traffic light
    8, 8, 8, 8, 8, 7, 7, 7, 7, 7,  # 10-19
    7, 7, 7, 7, 7, 6, 6, 6, 6, 6,  # 20-29
    6, 6, 6, 10, 10, 10, 10, 10, 10, 10,  # 30-39
    10, 10, 10, 5, 5, 5, 5, 5, 5, 5,  # 40-49
    5, 2, 2, 2, 2, 2, 2, 2, 2, 2,  # 50-59
    2, 3, 3, 3, 3, 3, 3, 3, 3, 3,  # 60-69
    3, 0, 0, 0, 0, 0, 0, 1, 1, 1,  # 70-79
    1, 1, 1, 4, 4, 4, 4, 4, 4, 4,  # 80-89
    4, 17, 17, 22, 20, 20, 22, 15, 25, 16,  # 90: hair brush; 91-99: banner ... cardboard
    13, 12, 12, 17, 17, 23, 15, 15, 17, 15,  # 100-109
    21, 15, 25, 13, 13, 13, 13, 13, 22, 26,  # 110-119
    14, 14, 15, 22, 21, 21, 24, 20, 22, 15,  # 120-129
    17, 16, 15, 22, 24, 21, 17, 25, 16, 21,  # 130-139
    17, 22, 16, 21, 21, 25, 21, 26, 21, 24,  # 140-149
    20, 17, 14, 21, 26, 15, 23, 20, 21, 24,  # 150-159
    15, 24, 22, 25, 15, 20, 17, 17, 22, 14,  # 160-169
    18, 18, 18, 18, 18, 18, 18, 26, 26, 19,  # 170-179
    19, 24,  # 180-181: window-other, wood
)  # fmt: skip
FEW_STUFF = ("sky", "plant", "ground")  # COCO-Stuff-3, in IIC's ``_CocoFew.label_names`` order
N_FINE = 182
_INVALID = 254  # a LUT value that marks PNG values no COCO-Stuff annotation holds (182..254)

CURATED_LISTS = {3: "Coco164kFew_Stuff_{version}.txt", 15: "Coco164kFull_Stuff_Coarse_{version}.txt",
                 27: "Coco164kFull_Stuff_Coarse_{version}.txt"}
DEFAULT_VERSION = {3: 6, 15: 7, 27: 7}


def coarse_index(name: str, stuff: bool) -> int:
    """Coarse index of a coarse class name (names repeat between things and stuff, e.g. ``food``)."""
    offset = N_THING_COARSE if stuff else 0
    names = COARSE_NAMES[N_THING_COARSE:] if stuff else COARSE_NAMES[:N_THING_COARSE]
    return offset + names.index(name)


def label_lut(classes: int) -> np.ndarray:
    """(256,) uint8 lookup: fine PNG value -> training label (255 = ignore, ``_INVALID`` = not a COCO value)."""
    coarse = np.asarray(FINE_TO_COARSE, dtype=np.int64)
    if classes == 27:
        target = coarse
    elif classes == 15:
        target = np.where(coarse >= N_THING_COARSE, coarse - N_THING_COARSE, 255)
    elif classes == 3:
        few = {coarse_index(n, stuff=True): i for i, n in enumerate(FEW_STUFF)}
        target = np.array([few.get(int(c), 255) for c in coarse])
    else:
        raise ConfigError(f"dataset kind 'cocostuff': classes must be 3, 15 or 27, got {classes}")
    lut = np.full(256, _INVALID, dtype=np.uint8)
    lut[:N_FINE] = target
    lut[255] = 255
    return lut


def class_names(classes: int) -> list[str]:
    if classes == 27:
        return [f"{n}-{'stuff' if i >= N_THING_COARSE else 'things'}" for i, n in enumerate(COARSE_NAMES)]
    if classes == 15:
        return [f"{n}-stuff" for n in COARSE_NAMES[N_THING_COARSE:]]
    return [f"{n}-stuff" for n in FEW_STUFF]


@dataclass
class CocoStuffConfig(DatasetConfig):
    protocol: str = "iic"  # "iic" or "picie": sets the defaults of the geometry keys, classes and partitions
    classes: int = 15  # 3, 15 (stuff) or 27 (things + stuff)
    partitions: tuple[str, ...] = ("train2017", "val2017")  # sub-folders of images/, annotations/, curated/
    curated_dir: str | None = None  # folder holding <partition>/<list>.txt; null = root/curated
    curated_version: int | None = None  # null = 6 for 3 classes, 7 otherwise (the papers' lists)
    id_list: str | None = None  # a custom id-list file name inside curated_dir/<partition>/ instead


@register_dataset("cocostuff")
class CocoStuffDataset(ImageDataset):
    config_class = CocoStuffConfig

    @classmethod
    def default_values(cls, spec: dict[str, Any], *, train: bool) -> dict[str, Any]:
        protocol = spec.get("protocol", "iic")
        if protocol == "iic":
            return {"scale": 0.33, "crop": 128, "eval_crop": 128, "train_labels": True, "classes": 15,
                    "partitions": ["train2017", "val2017"]}
        if protocol == "picie":
            return {"short_side": 640 if train else 320, "crop": 640, "crop_mode": "centre", "eval_crop": 320,
                    "classes": 27, "partitions": ["train2017"] if train else ["val2017"]}
        raise ConfigError(f"dataset kind 'cocostuff': protocol must be 'iic' or 'picie', got {protocol!r}")

    def __init__(self, config: CocoStuffConfig, *, train: bool):
        super().__init__(config, train=train)
        self.centre_rule = "picie" if config.protocol == "picie" else "iic"
        self.lut = label_lut(config.classes)
        self.class_names = class_names(config.classes)
        self.has_labels = True
        curated = Path(config.curated_dir).expanduser() if config.curated_dir else self.root / "curated"
        name = config.id_list or CURATED_LISTS[config.classes].format(
            version=config.curated_version or DEFAULT_VERSION[config.classes])
        self.image_paths: list[Path] = []
        self.label_paths: list[Path] = []
        for partition in config.partitions:
            self._add_partition(partition, curated / partition / name)

    def _add_partition(self, partition: str, list_path: Path) -> None:
        if not list_path.is_file():
            raise DataError(f"COCO-Stuff curated id list {list_path} does not exist")
        ids = [s.strip() for s in list_path.read_text(encoding="utf-8").splitlines() if s.strip()]
        if not ids:
            raise DataError(f"COCO-Stuff curated id list {list_path} is empty")
        images = self.root / "images" / partition
        if not images.is_dir():
            raise DataError(f"COCO-Stuff image folder {images} does not exist")
        for image_id in ids:
            path = images / f"{image_id}.jpg"
            if not path.is_file():
                raise DataError(f"image {path} (listed in {list_path}) does not exist")
            self.image_paths.append(path)
            self.label_paths.append(self.root / "annotations" / partition / f"{image_id}.png")
        self.ids.extend(f"{partition}/{i}" for i in ids)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        image = read_image(self.image_paths[index], self.config.channels)
        if not self.returns_labels:
            return image, None
        path = self.label_paths[index]
        if not path.is_file():
            raise DataError(f"COCO-Stuff label file {path} (for image {self.image_paths[index]}) does not exist")
        fine = read_label(path)
        if fine.shape != image.shape[:2]:
            raise DataError(f"label file {path} is {fine.shape[::-1]} but its image is {image.shape[1::-1]}")
        label = self.lut[fine]  # (H, W) uint8
        if (label == _INVALID).any():
            bad = np.unique(fine[label == _INVALID])[:10].tolist()
            raise DataError(f"label file {path} holds values {bad}: COCO-Stuff labels are 0..181 and 255")
        return image, label
