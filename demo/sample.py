"""The bundled NEU-Seg sample (``samples/neu-seg``): its splits, class names, frames and masks.

``splits.json`` holds ``train`` (32 images, used without their masks), ``calibration`` (6 labelled images inside
``train``, only to name clusters) and ``holdout`` (8 images, never trained on, scored at the end).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from demo.settings import DemoError

SPLITS = ("train", "calibration", "holdout")


@dataclass(frozen=True)
class Sample:
    root: Path
    splits: dict[str, list[str]]
    class_names: list[str]

    @classmethod
    def open(cls, root: Path) -> Sample:
        for needed in ("images", "masks", "splits.json", "labels.txt"):
            if not (root / needed).exists():
                raise DemoError(f"the bundled sample is incomplete: {root / needed} is missing")
        try:
            splits = json.loads((root / "splits.json").read_text())
        except json.JSONDecodeError as e:
            raise DemoError(f"{root / 'splits.json'} is not valid JSON: {e}") from None
        missing = [s for s in SPLITS if not splits.get(s)]
        if missing:
            raise DemoError(f"{root / 'splits.json'} has no (or an empty) {', '.join(missing)} split")
        if set(splits["holdout"]) & set(splits["train"]):
            raise DemoError(f"{root / 'splits.json'}: holdout images appear in train")
        names = [n.strip() for n in (root / "labels.txt").read_text().splitlines() if n.strip()]
        return cls(root, {s: list(splits[s]) for s in SPLITS}, names)

    def image_path(self, ident: str) -> Path:
        found = sorted((self.root / "images").glob(f"{ident}.*"))
        if not found:
            raise DemoError(f"no image {ident}.* in {self.root / 'images'}")
        return found[0]

    def mask_path(self, ident: str) -> Path:
        return self.root / "masks" / f"{ident}.png"

    def frame(self, ident: str) -> np.ndarray:
        """The frame as a line camera would give it to ``Segmenter.predict``: BGR uint8 (H, W, 3)."""
        path = self.image_path(ident)
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is None:
            raise DemoError(f"cannot read image {path}")
        return frame

    def mask(self, ident: str) -> np.ndarray:
        """Class ids, uint8 (H, W)."""
        path = self.mask_path(ident)
        mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if mask is None or mask.ndim != 2:
            raise DemoError(f"cannot read mask {path} as a single-channel class-id PNG")
        return mask

    def copy_split(self, split: str, dest: Path) -> Path:
        """``dest/images``, ``dest/masks`` and ``dest/labels.txt`` for one split: the folder layout that
        ``python -m export --calibrate IMAGES MASKS`` and ``usseg calibrate`` read."""
        for sub in ("images", "masks"):
            (dest / sub).mkdir(parents=True, exist_ok=True)
        for ident in self.splits[split]:
            image = self.image_path(ident)
            shutil.copyfile(image, dest / "images" / image.name)
            shutil.copyfile(self.mask_path(ident), dest / "masks" / f"{ident}.png")
        shutil.copyfile(self.root / "labels.txt", dest / "labels.txt")
        return dest
