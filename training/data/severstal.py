"""``kind: severstal`` — Kaggle "Severstal: Steel Defect Detection" (the data cannot be redistributed).

Layout as Kaggle ships it::

    root/train.csv              ImageId,ClassId,EncodedPixels (one row per image and defect class present)
    root/train_images/<ImageId> 256x1600 JPEG

Labels: 0 = background, 1-4 = the competition's defect classes (Kaggle gives them no names). ``EncodedPixels``
are run-length pairs, 1-indexed, column-major, decoded by :mod:`usseg_sdk.rle`. An image in ``train_images``
without a row is all background (about half of the set). The competition's first ``train.csv`` had the header
``ImageId_ClassId,EncodedPixels``; it is refused with a message (convert it to the final format first).
``test_images`` have no labels: read them with ``kind: folder``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from training.data.image_dataset import DatasetConfig, ImageDataset
from training.data.image_io import read_image
from training.data.mask_folder import index_images
from training.data.registry import register_dataset
from training.data.splits import resolve_split_file, select_ids
from training.errors import DataError
from usseg_sdk.errors import RLEError
from usseg_sdk.rle import read_csv, rows_to_label_map

logger = logging.getLogger(__name__)

SEVERSTAL_CLASSES = ("background", "defect_1", "defect_2", "defect_3", "defect_4")


@dataclass
class SeverstalConfig(DatasetConfig):
    channels: int = 1  # the images are grey (stored as 3 identical JPEG channels)
    crop: int | None = 256  # 256x256 windows of the 256x1600 strips
    csv: str = "train.csv"  # relative to root
    images_dir: str = "train_images"  # relative to root
    ids: tuple[str, ...] | None = None  # explicit ImageIds (file names, e.g. "0002cc93b.jpg")
    split_file: str | None = None  # JSON {split: [ImageIds]} or text, as for mask_folder
    split: str | None = None
    class_names: tuple[str, ...] = SEVERSTAL_CLASSES


@register_dataset("severstal")
class SeverstalDataset(ImageDataset):
    config_class = SeverstalConfig

    def __init__(self, config: SeverstalConfig, *, train: bool):
        super().__init__(config, train=train)
        images = {p.name: p for p in index_images(self.root / config.images_dir, (".jpg", ".jpeg", ".png")).values()}
        csv_path = self.root / config.csv
        if not csv_path.is_file():
            raise DataError(f"Severstal label file {csv_path} does not exist")
        try:
            self.rows = read_csv(csv_path)
        except RLEError as e:
            raise DataError(f"Severstal label file {csv_path} is malformed: {e}") from None
        absent = [i for i in self.rows if i not in images]
        if absent:
            logger.warning("%d image(s) of %s are not in %s (e.g. %s); they are left out",
                           len(absent), csv_path, self.root / config.images_dir, absent[0])
        split_file = resolve_split_file(config.split_file, config.split, self.root)
        self.ids = select_ids(list(images), config.ids, split_file, config.split, f"severstal {self.root}")
        self.image_paths = [images[i] for i in self.ids]
        self.csv_path = csv_path
        self.has_labels = True
        self.class_names = list(config.class_names)
        self._require_labels_for_train_labels()

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        image = read_image(self.image_paths[index], self.config.channels)
        if not self.returns_labels:
            return image, None
        image_id = self.ids[index]
        try:
            label = rows_to_label_map(self.rows.get(image_id, []), image.shape[:2])
        except RLEError as e:
            raise DataError(f"{self.csv_path}: rows of image {image_id}: {e}") from None
        self.check_label_values(label, self.csv_path)
        return image, label
