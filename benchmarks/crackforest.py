"""CrackForest (CFD, road-surface cracks) as a ``mask_folder`` view, and its seeded split.

The source (``$USSEG_DATA/crackforest``, see its PROVENANCE.md): ``image/NNN.jpg`` (155 RGB 480x320 frames) and
``groundTruth/NNN.mat`` for 118 of them, a MATLAB struct whose ``Segmentation`` field holds 1 background, 2 crack,
3 the area enclosed by a network of cracks, 4 a rare undocumented value. The benchmark's classes are two:
**1 -> background (0); 2, 3 and 4 -> crack (1)** (``CLASS_RULE``). PROVENANCE recommends crack = (value == 2);
merging 3 and 4 into crack is this benchmark's choice and is written into every report.

:func:`mask_folder` converts the source once into ``<cache>/crackforest_v<N>/`` (``images/<id>.jpg`` copied,
``masks/<id>.png`` 8-bit class ids for the labelled frames, ``labels.txt``), built in a temporary folder and
renamed into place, so an interrupted conversion leaves nothing half-written. The split
(``benchmarks/splits/crackforest.json``, :func:`make_split`) trains on every frame without labels, names clusters
from 5 % of the labelled frames and scores the rest; nothing was tuned on CrackForest, so there is no tuning
subset. Write it again with ``python -m benchmarks.crackforest --write-split``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

CLASS_NAMES = ("background", "crack")
CLASS_RULE = "Segmentation value 1 -> background (0); 2 (crack), 3 (area enclosed by crack networks), 4 -> crack (1)"
CONVERSION_VERSION = 1  # in the cache folder's name: a new rule gets a new folder, never a stale one
SPLIT_SEED = 0
CALIBRATION_FRACTION = 0.05
DONE_MARKER = "conversion.json"


def source_root(root: str | Path) -> Path:
    """The CrackForest folder: ``root/crackforest``, or ``root`` itself when it holds ``groundTruth/``."""
    root = Path(root)
    return root if (root / "groundTruth").is_dir() else root / "crackforest"


def read_segmentation(path: Path) -> np.ndarray:
    """The raw ``Segmentation`` array (uint8 (H, W), values 1-4) of one ground-truth .mat file."""
    from scipy.io import loadmat

    try:
        return np.asarray(loadmat(str(path))["groundTruth"][0, 0]["Segmentation"], dtype=np.uint8)
    except (OSError, KeyError, IndexError, ValueError) as e:
        raise ValueError(f"{path}: not a CrackForest ground-truth file (groundTruth.Segmentation): {e}") from e


def to_classes(segmentation: np.ndarray) -> np.ndarray:
    """``CLASS_RULE``: 1 -> 0 (background), every other value -> 1 (crack)."""
    return (segmentation != 1).astype(np.uint8)


def labelled_ids(source: Path) -> list[str]:
    return sorted(p.stem for p in (source / "groundTruth").glob("*.mat"))


def image_ids(source: Path) -> list[str]:
    return sorted(p.stem for p in (source / "image").glob("*.jpg"))


def mask_folder(root: str | Path, cache: str | Path) -> Path:
    """The converted view of the CrackForest under ``root`` (built on first use, then reused)."""
    source = source_root(root)
    if not (source / "image").is_dir() or not (source / "groundTruth").is_dir():
        raise FileNotFoundError(f"{source}: no CrackForest here (expected image/ and groundTruth/); set --data-root "
                                "or $USSEG_DATA to the folder holding crackforest/")
    target = Path(cache) / f"crackforest_v{CONVERSION_VERSION}"
    if (target / DONE_MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _convert(source, tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private
        if (target / DONE_MARKER).is_file():  # another run converted it meanwhile (and may be reading it)
            return target
        if target.exists():  # left by an older, interrupted layout: replace it
            shutil.rmtree(target)
        try:
            os.replace(tmp, target)
        except OSError:  # another run's view landed between the check and the rename
            if not (target / DONE_MARKER).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert(source: Path, out: Path) -> None:
    import cv2

    (out / "images").mkdir()
    (out / "masks").mkdir()
    images, labelled = image_ids(source), labelled_ids(source)
    for image_id in images:
        shutil.copyfile(source / "image" / f"{image_id}.jpg", out / "images" / f"{image_id}.jpg")
    for image_id in labelled:
        mask = to_classes(read_segmentation(source / "groundTruth" / f"{image_id}.mat"))
        if not cv2.imwrite(str(out / "masks" / f"{image_id}.png"), mask):
            raise OSError(f"cannot write {out / 'masks' / image_id}.png")
    (out / "labels.txt").write_text("\n".join(CLASS_NAMES) + "\n", encoding="utf-8")
    info = {"source": str(source), "images": len(images), "labelled": len(labelled), "classes": list(CLASS_NAMES),
            "rule": CLASS_RULE, "version": CONVERSION_VERSION}
    (out / DONE_MARKER).write_text(json.dumps(info, indent=1), encoding="utf-8")  # last: marks the view complete


def make_split(images: Sequence[str], labelled: Sequence[str], *, seed: int = SPLIT_SEED,
               fraction: float = CALIBRATION_FRACTION) -> dict[str, Any]:
    """``train``: every image (labels unused); ``calibration``: ``round(fraction * labelled)`` (at least 1) of the
    labelled images, the first of a ``numpy.random.default_rng(seed)`` permutation of their sorted ids;
    ``eval``: the other labelled images."""
    missing = sorted(set(labelled) - set(images))
    if missing:
        raise ValueError(f"labelled ids without an image: {missing[:5]}")
    ordered = sorted(labelled)
    order = np.random.default_rng(seed).permutation(len(ordered))
    n_calibration = max(1, round(fraction * len(ordered)))
    calibration = sorted(ordered[i] for i in order[:n_calibration])
    chosen = set(calibration)
    return {"dataset": "crackforest", "seed": seed, "calibration_fraction": fraction,
            "rule": f"train: every image, labels unused (nothing was tuned on CrackForest: no tuning subset); "
                    f"calibration: the first max(1, round({fraction} x labelled)) of a numpy default_rng(seed) "
                    "permutation of the sorted labelled ids, used only to name clusters; eval: the other labelled "
                    f"ids. Classes: {CLASS_RULE}.",
            "counts": {"train": len(images), "calibration": len(calibration),
                       "eval": len(ordered) - len(calibration)},
            "train": sorted(images), "calibration": calibration, "eval": [i for i in ordered if i not in chosen]}


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks.datasets import CRACKFOREST, data_root
    from usseg_sdk.atomic import write_text_atomic

    p = argparse.ArgumentParser(prog="python -m benchmarks.crackforest", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default=None, help="folder holding crackforest/ (default $USSEG_DATA)")
    p.add_argument("--write-split", action="store_true", help=f"write {CRACKFOREST.split_file}")
    args = p.parse_args(argv)
    source = source_root(data_root(args.data_root))
    split = make_split(image_ids(source), labelled_ids(source))
    print(json.dumps(split["counts"]))
    if args.write_split:
        write_text_atomic(CRACKFOREST.split_file, json.dumps(split, indent=1) + "\n")
        print(f"wrote {CRACKFOREST.split_file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
