"""``kind: mask_folder`` — images with 8-bit class-index masks, NEU-Seg's layout (and the bundled sample's).

Layout (folder names configurable)::

    root/images/<id>.jpg    any common image format; grey or colour
    root/masks/<id>.png     single-channel 8-bit class indices, 255 = ignore
    root/labels.txt         optional: one class name per line, in index order
    root/splits.json        optional: {"<split>": [id, ...]} (``split`` alone reads this file)

``class_names`` in the spec wins over ``labels.txt``. A labels.txt in labelme's convention (first line
``__ignore__``, which labelme maps to -1, then ``_background_`` = 0) has its first line dropped: the shared NEU-Seg
copy is such a file, and it also lists an ``others`` class that no mask uses, so give ``class_names`` for it.
With ``masks_dir: null`` the folder is an unlabelled training set (images only).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data.image_dataset import DatasetConfig, ImageDataset
from training.data.image_io import IMAGE_EXTENSIONS, is_image_file, normalise_extensions, read_image, read_label
from training.data.registry import register_dataset
from training.data.splits import resolve_split_file, select_ids
from training.errors import DataError

LABELME_IGNORE = "__ignore__"


@dataclass
class MaskFolderConfig(DatasetConfig):
    images_dir: str = "images"  # relative to root
    masks_dir: str | None = "masks"  # relative to root; null = unlabelled (images only)
    mask_suffix: str = ".png"  # mask of image <id>.* is masks_dir/<id><mask_suffix>
    class_names: tuple[str, ...] | None = None  # null = read root/labels.txt if present
    ids: tuple[str, ...] | None = None  # explicit image ids (file stems); null = split file or every image
    split_file: str | None = None  # JSON {split: [ids]} or text (one id a line); relative to root, then cwd
    split: str | None = None  # name of the split in a JSON split file (default file: root/splits.json)
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS
    max_value: float | None = None  # pixel value that maps to 1.0; null = 255 (8-bit) / 65535 (16-bit)


def read_class_names(path: Path) -> list[str]:
    """Class names from a labels.txt, one a line; a labelme ``__ignore__`` first line is dropped."""
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return names[1:] if names and names[0] == LABELME_IGNORE else names


def index_images(folder: Path, extensions: tuple[str, ...]) -> dict[str, Path]:
    """{stem: path} of the images directly in ``folder``; two images with one stem are a DataError."""
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not (is_image_file(path, extensions) and path.is_file()):
            continue
        if path.stem in found:
            raise DataError(f"two images share the id {path.stem!r}: {found[path.stem]} and {path}")
        found[path.stem] = path
    if not found:
        raise DataError(f"no image files ({', '.join(extensions)}) in {folder}")
    return found


@register_dataset("mask_folder")
class MaskFolderDataset(ImageDataset):
    config_class = MaskFolderConfig

    def __init__(self, config: MaskFolderConfig, *, train: bool):
        super().__init__(config, train=train)
        extensions = normalise_extensions(config.extensions)
        images = index_images(self.root / config.images_dir, extensions)
        split_file = resolve_split_file(config.split_file, config.split, self.root)
        self.ids = select_ids(list(images), config.ids, split_file, config.split, f"mask_folder {self.root}")
        self.image_paths = [images[i] for i in self.ids]
        self.has_labels = config.masks_dir is not None
        self._require_labels_for_train_labels()
        self.mask_paths: list[Path] = []
        if self.has_labels:
            masks = self.root / config.masks_dir  # type: ignore[operator]
            self.mask_paths = [masks / f"{i}{config.mask_suffix}" for i in self.ids]
            for image, mask in zip(self.image_paths, self.mask_paths, strict=True):
                if not mask.is_file():
                    raise DataError(f"image {image} has no mask: {mask} does not exist")
            self.class_names = self._class_names(config)

    def _class_names(self, config: MaskFolderConfig) -> list[str] | None:
        if config.class_names is not None:
            return list(config.class_names)
        labels_txt = self.root / "labels.txt"
        return read_class_names(labels_txt) if labels_txt.is_file() else None

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        image = read_image(self.image_paths[index], self.config.channels, self.config.max_value)
        if not self.returns_labels:
            return image, None
        label = read_label(self.mask_paths[index])
        if label.shape != image.shape[:2]:
            raise DataError(
                f"mask {self.mask_paths[index]} is {label.shape[1]}x{label.shape[0]} but its image "
                f"{self.image_paths[index]} is {image.shape[1]}x{image.shape[0]}"
            )
        self.check_label_values(label, self.mask_paths[index])
        return image, label
