"""``kind: folder`` — a folder of unlabelled images (the usual training set of an inspection line).

Every file under ``root`` (recursively by default) whose suffix is one of ``extensions`` (case-insensitive;
names starting with '.' are skipped), in sorted order of the relative path, so indices are stable across
machines. Grey or colour, 8-bit or 16-bit (see ``training.data.image_io`` for the scaling).

Label maps are not frames: sub-folders named like label folders (``exclude_dirs``: masks, labels, annotations,
...) are not read, so pointing ``root`` at an image+mask tree (NEU-Seg's ``images/`` + ``masks/``) trains on the
images only, and files whose stem ends with a mask suffix (``mask_suffixes``: ``frame_mask.png``,
``frame-label.png``, ``frame_gt.png``, ...; case-insensitive) are left out, so masks saved beside their frames do
not double an epoch. What was left out is logged; frames and masks that share a stem and differ only in suffix
(``f.jpg`` + ``f.png``) cannot be told apart by name: a WARNING suggests ``extensions``.

Unreadable files: with ``on_error: raise`` (default) the dataset refuses to build and names the first one;
with ``on_error: skip`` they are left out and counted in one WARNING log line. The check at build time reads
each file's signature only; a file that still fails to decode when read is, with ``skip``, replaced by the next
readable image (WARNING naming it; the item keeps its own ``index``), and with ``raise`` a DataError.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data.image_dataset import DatasetConfig, ImageDataset
from training.data.image_io import IMAGE_EXTENSIONS, can_decode, is_image_file, normalise_extensions, read_image
from training.data.registry import register_dataset
from training.errors import ConfigError, DataError
from usseg_sdk.masks import MASK_FOLDERS, MASK_SUFFIXES, in_skipped_folder, is_mask_name

logger = logging.getLogger(__name__)


@dataclass
class FolderConfig(DatasetConfig):
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS  # file suffixes that count as images (with the dot)
    recursive: bool = True  # also look in sub-folders
    exclude_dirs: tuple[str, ...] = MASK_FOLDERS  # usseg_sdk.masks: the rule `usseg predict` uses too
    mask_suffixes: tuple[str, ...] = MASK_SUFFIXES  # stems ending so (after _ or -) are label maps, not frames
    on_error: str = "raise"  # unreadable files: "raise" (DataError naming the file) or "skip" (logged count)
    max_value: float | None = None  # pixel value that maps to 1.0; null = 255 (8-bit) / 65535 (16-bit)


def list_image_files(root: Path, extensions: tuple[str, ...], recursive: bool,
                     exclude_dirs: tuple[str, ...] = ()) -> list[Path]:
    """Image files under ``root`` sorted by relative POSIX path (hidden folders and ``exclude_dirs`` skipped)."""
    candidates = root.rglob("*") if recursive else root.glob("*")
    files = [p for p in candidates if is_image_file(p, extensions) and p.is_file()
             and not in_skipped_folder(p, root, exclude_dirs)]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _shared_stems(files: list[Path]) -> list[tuple[Path, Path]]:
    """Pairs of listed files in one folder with one stem (``f.jpg`` + ``f.png``): the first found, the other."""
    first: dict[Path, Path] = {}
    pairs = []
    for p in files:
        key = p.with_suffix("")
        if key in first:
            pairs.append((first[key], p))
        first.setdefault(key, p)
    return pairs


@register_dataset("folder")
class FolderDataset(ImageDataset):
    config_class = FolderConfig

    def __init__(self, config: FolderConfig, *, train: bool):
        super().__init__(config, train=train)
        if config.on_error not in ("raise", "skip"):
            raise ConfigError(f"dataset kind 'folder': on_error must be 'raise' or 'skip', got {config.on_error!r}")
        self._require_labels_for_train_labels()
        extensions = normalise_extensions(config.extensions)
        files = self._frames(list_image_files(self.root, extensions, config.recursive, config.exclude_dirs))
        skipped_dirs = sorted(d.name for d in self.root.iterdir()
                              if d.is_dir() and d.name.lower() in {x.lower() for x in config.exclude_dirs})
        if skipped_dirs and config.recursive:
            # An image+mask tree (NEU-Seg layout): label PNGs are not training images.
            logger.info("folder %s: not reading sub-folder(s) %s (label maps); set exclude_dirs to change this",
                        self.root, skipped_dirs)
        if not files:
            raise DataError(f"no image files ({', '.join(extensions)}) in {self.root}")
        unreadable = [p for p in files if not can_decode(p)]
        if unreadable and config.on_error == "raise":
            raise DataError(
                f"cannot read image file {unreadable[0]} ({len(unreadable)} of {len(files)} files in {self.root} "
                "are unreadable); fix or remove them, or set on_error: skip"
            )
        if unreadable:
            logger.warning(
                "skipping %d unreadable image file(s) of %d in %s (first: %s)",
                len(unreadable), len(files), self.root, unreadable[0],
            )
        bad = set(unreadable)
        self.paths = [p for p in files if p not in bad]
        self.skipped = unreadable
        if not self.paths:
            raise DataError(f"none of the {len(files)} image files in {self.root} can be read")
        self.ids = [p.relative_to(self.root).as_posix() for p in self.paths]

    def _frames(self, files: list[Path]) -> list[Path]:
        masks = [p for p in files if is_mask_name(p, self.config.mask_suffixes)]
        if masks:
            logger.info("folder %s: not reading %d label map(s) named like %s (mask_suffixes)", self.root,
                        len(masks), masks[0].name)
        skipped = set(masks)
        files = [p for p in files if p not in skipped]
        pairs = _shared_stems(files)
        if pairs:
            frame, other = pairs[0]
            logger.warning("folder %s: %d image(s) share their name with one of another type (first: %s and %s); if "
                           "one kind are masks, set extensions to the frames' type (e.g. extensions: [%s])",
                           self.root, len(pairs), frame.name, other.name, frame.suffix[1:].lower())
        return files

    def load(self, index: int) -> tuple[np.ndarray, None]:
        c = self.config
        for attempt in range(len(self.paths)):
            i = (index + attempt) % len(self.paths)
            try:
                return read_image(self.paths[i], c.channels, c.max_value), None
            except DataError:
                if c.on_error == "raise":
                    raise
                logger.warning("skipping unreadable image file %s; using the next image instead", self.paths[i])
        raise DataError(f"none of the {len(self.paths)} image files in {self.root} can be decoded")
