"""The base class of every dataset reader: spec keys shared by all kinds, and the item pipeline.

Item contract (docs/ARCHITECTURE.md "Batches"): ``{"image": float32 (C, H, W) in [0, 1], "index": int64,
"label": int64 (H, W), 255 = ignore}``, the label only where the dataset has labels (and, in training, only
with ``train_labels``). Pipeline: ``load`` (a subclass reads one image and its label map) -> pre-scale
(``scale``) -> shorter-side resize (``short_side``) -> training: zero-padded crop of ``crop`` (random, or
centred with ``crop_mode: centre``); evaluation: centre crop of ``eval_crop`` or the whole image -> tensors.

Randomness of training crops, and how it meets DataLoader workers:

* ``seed: null`` (default): offsets come from the global torch RNG. In the main process (``num_workers=0``)
  that is the RNG the engine seeds and checkpoints. In worker processes torch seeds each worker's RNG with
  ``base_seed + worker_id``, ``base_seed`` drawn from the main process's torch RNG when the loader's iterator
  starts, so crops repeat for the same torch seed and the same ``num_workers`` (not across worker counts).
* ``seed: <int>``: each item draws from its own ``numpy.random.default_rng((seed, epoch, index))``; the crops
  depend only on the seed, :meth:`ImageDataset.set_epoch` and the index, whatever the workers, batch order or
  resume point. Call ``set_epoch`` before creating each epoch's iterator (worker processes copy the dataset
  when the iterator starts; with ``persistent_workers=True`` they would keep the old epoch).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset

from training.data.crop_resize import (
    IGNORE_INDEX,
    CentreRule,
    centre_crop,
    crop_at,
    pad_to,
    scale_pair,
    short_side_pair,
)
from training.errors import ConfigError, DataError


@dataclass
class DatasetConfig:
    """Spec keys every kind accepts (besides ``kind``). Kinds add their own in a subclass."""

    root: str | None = None  # dataset folder; presets leave it null and the CLI's --data sets it
    channels: int = 3  # 1 grey (cv2 weights), 3 RGB (grey images repeated); 4 RGBIR for potsdam only
    crop: int | None = 128  # training: crop side, zero-padded when the image is smaller; null = whole image
    crop_mode: str = "random"  # training crops: "random" or "centre"
    eval_crop: int | None = None  # evaluation: centre-crop side; null = whole image
    scale: float = 1.0  # pre-scale factor applied first, in both modes (IIC's COCO uses 0.33)
    short_side: int | None = None  # resize so the shorter side has this length (PiCIE), after ``scale``
    seed: int | None = None  # crop randomness: null = global torch RNG; int = per-(seed, epoch, index) RNG
    train_labels: bool = False  # also return label crops in training items (kinds with labels only)


class ImageDataset(Dataset):
    """Subclasses set ``config_class``, fill ``self.ids`` and implement :meth:`load`; ``has_labels`` and
    ``class_names`` describe the label maps (``class_names`` is None when unknown)."""

    kind: ClassVar[str] = ""
    config_class: ClassVar[type[DatasetConfig]] = DatasetConfig
    allowed_channels: ClassVar[tuple[int, ...]] = (1, 3)
    ignore_index: ClassVar[int] = IGNORE_INDEX

    def __init__(self, config: DatasetConfig, *, train: bool):
        self.config = config
        self.train = train
        self.epoch = 0
        self.ids: list[str] = []
        self.has_labels = False
        self.class_names: list[str] | None = None
        self.centre_rule: CentreRule = "iic"  # how centre crops are placed (see crop_resize.centre_offsets)
        self._check_common(config)
        self.root = Path(config.root).expanduser()  # type: ignore[arg-type]
        if not self.root.is_dir():
            raise DataError(f"{self.kind} dataset folder {self.root} does not exist or is not a folder")

    @classmethod
    def default_values(cls, spec: dict[str, Any], *, train: bool) -> dict[str, Any]:
        """Defaults that depend on other keys or the mode (e.g. a protocol); the user's spec overrides them."""
        return {}

    # -- subclass interface ----------------------------------------------------------------------------
    def load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(image float32 (H, W, C) in [0, 1], label uint8 (H, W) with 255 = ignore, or None)."""
        raise NotImplementedError

    # -- dataset protocol ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self.ids):
            raise IndexError(f"index {index} out of range for a dataset of {len(self.ids)} images")
        image, label = self.load(index)
        if not self.returns_labels:
            label = None
        image, label = self.apply_geometry(image, label, index)
        return self.to_item(index, image, label)

    @property
    def returns_labels(self) -> bool:
        return self.has_labels and (not self.train or self.config.train_labels)

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch's crops when ``seed`` is set (see the module docstring)."""
        self.epoch = int(epoch)

    # -- pipeline --------------------------------------------------------------------------------------
    def apply_geometry(
        self, image: np.ndarray, label: np.ndarray | None, index: int
    ) -> tuple[np.ndarray, np.ndarray | None]:
        c = self.config
        image, label = scale_pair(image, label, c.scale)
        if c.short_side is not None:
            image, label = short_side_pair(image, label, c.short_side)
        size = c.crop if self.train else c.eval_crop
        if size is None:
            return image, label
        if self.train and c.crop_mode == "random":
            image, label = pad_to(image, label, size)
            top, left = self.random_offsets(index, image.shape[0] - size, image.shape[1] - size)
            return crop_at(image, label, top, left, size)
        return centre_crop(image, label, size, self.centre_rule)

    def random_offsets(self, index: int, max_top: int, max_left: int) -> tuple[int, int]:
        """Uniform corner in [0, max_top] x [0, max_left]; two draws always, whatever the sizes."""
        if self.config.seed is None:
            top = int(torch.randint(0, max_top + 1, (1,)).item())
            left = int(torch.randint(0, max_left + 1, (1,)).item())
            return top, left
        rng = np.random.default_rng((self.config.seed, self.epoch, index))
        return int(rng.integers(0, max_top + 1)), int(rng.integers(0, max_left + 1))

    def to_item(self, index: int, image: np.ndarray, label: np.ndarray | None) -> dict[str, torch.Tensor]:
        chw = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)  # (C, H, W)
        item = {"image": torch.from_numpy(chw), "index": torch.tensor(index, dtype=torch.int64)}
        if label is not None:
            item["label"] = torch.from_numpy(label.astype(np.int64))  # (H, W)
        return item

    def check_label_values(self, label: np.ndarray, path: Path) -> None:
        """A label map may hold 0..n_classes-1 and 255; anything else means a wrong file or class list."""
        if self.class_names is None:
            return
        n = len(self.class_names)
        bad = np.unique(label[(label >= n) & (label != self.ignore_index)])
        if bad.size:
            raise DataError(
                f"label file {path} holds class values {bad[:10].tolist()} but the dataset has {n} classes "
                f"{self.class_names} (and 255 = ignore)"
            )

    # -- validation ------------------------------------------------------------------------------------
    def _check_common(self, c: DatasetConfig) -> None:
        where = f"dataset kind {self.kind!r}"
        if not c.root:
            raise ConfigError(f"{where}: 'root' is required (the dataset folder; the CLI's --data sets it)")
        if c.channels not in self.allowed_channels:
            raise ConfigError(f"{where}: channels must be one of {list(self.allowed_channels)}, got {c.channels}")
        for key in ("crop", "eval_crop", "short_side"):
            value = getattr(c, key)
            if value is not None and value <= 0:
                raise ConfigError(f"{where}: {key} must be a positive number of pixels or null, got {value}")
        if c.crop_mode not in ("random", "centre"):
            raise ConfigError(f"{where}: crop_mode must be 'random' or 'centre', got {c.crop_mode!r}")
        if not c.scale > 0:
            raise ConfigError(f"{where}: scale must be > 0, got {c.scale}")

    def _require_labels_for_train_labels(self) -> None:
        if self.config.train_labels and not self.has_labels:
            raise ConfigError(f"dataset kind {self.kind!r}: train_labels is set but this dataset has no labels")

    def __repr__(self) -> str:
        mode = "train" if self.train else "eval"
        return f"{type(self).__name__}(kind={self.kind!r}, root={str(self.root)!r}, n={len(self)}, {mode})"
