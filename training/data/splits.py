"""Split files: reading them (``split_file`` + ``split`` in a spec) and making leak-free ones by seed.

A split file is JSON ``{"<split>": [id, ...], ...}`` (other keys hold metadata) or a text file with one id per
line. :func:`make_grouped_splits` draws an ``eval`` split that is never trained on and a small labelled
``calibration`` split inside ``train`` (used only to name clusters), keeping near-duplicate images on the same
side: a twin on each side of a split inflates the scores.

Near-duplicates. NEU-Seg is partly synthetic: many images are composites that share a region (a pasted defect,
half of a background) with another image, and a few are plain copies. A whole-image distance misses the
composites and cannot separate copies from look-alike textures (32x32 thumbnails: the mean absolute
differences of true copies and of unrelated uniform textures overlap; there is no gap). So the rule compares
*co-located regions of texture*: each image is reduced to 100x100 grey (cv2 INTER_AREA), high-passed (minus a
Gaussian blur, sigma 2 px) so shading does not count, and cut into a 4x4 grid of 25x25 blocks; two images are
twins when at least 2 co-located blocks have a normalised correlation >= 0.9 (identical regions score
0.95-1.0; unrelated streaky textures rarely pass 0.9 in one block and almost never in two). Twins of twins
form one group (union-find) and whole groups go to one side of every split. Groups are drawn in a
``numpy.random.default_rng(seed)`` permutation, stratified by each group's dominant defect class (the largest
non-background class of its first image, 0 when it has none) so small splits still hold every class.

The CLI that writes such a file is ``python -m training.data.make_splits``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from training.data.image_io import is_image_file
from training.errors import ConfigError, DataError

DESCRIPTOR_SIDE = 100  # images are compared at 100x100 (cv2 INTER_AREA)
GRID = 4  # in a 4x4 grid of 25x25 blocks
BLOCK_THRESHOLD = 0.9  # a block "matches" when its high-passed pixels correlate at least this much
MIN_BLOCKS = 2  # twins share at least this many co-located matching blocks


# -- reading -----------------------------------------------------------------------------------------------
def read_split_ids(path: Path, split: str | None) -> list[str]:
    """Ids of ``split`` in a JSON split file, or every line of a text split file (``split`` must be None)."""
    if not path.is_file():
        raise DataError(f"split file {path} does not exist")
    if path.suffix.lower() != ".json":
        if split is not None:
            raise ConfigError(f"split file {path} is a plain id list; it has no named split {split!r}")
        lines = path.read_text(encoding="utf-8").splitlines()
        return [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"split file {path} is not valid JSON: {e}") from e
    names = [k for k, v in data.items() if isinstance(v, list) and all(isinstance(x, str) for x in v)]
    if split is None or split not in names:
        what = "needs a 'split' name" if split is None else f"has no split {split!r}"
        raise ConfigError(f"split file {path} {what}; its splits: {', '.join(names) or '(none)'}")
    return list(data[split])


def resolve_split_file(split_file: str | None, split: str | None, root: Path) -> Path | None:
    """``split_file`` relative to ``root`` first, then to the working directory; ``root/splits.json`` when only
    ``split`` is given; None when neither is."""
    if split_file is None:
        return root / "splits.json" if split is not None else None
    path = Path(split_file).expanduser()
    if path.is_absolute() or not (root / path).exists():
        return path
    return root / path


def select_ids(
    available: Sequence[str], ids: Sequence[str] | None, split_file: Path | None, split: str | None, where: str
) -> list[str]:
    """The ids a spec asks for (explicit ``ids``, else a split file, else all available, sorted); asking for
    an id that is not available is a DataError naming it and the list it came from."""
    if ids is not None and split_file is not None:
        raise ConfigError(f"{where}: give either 'ids' or 'split_file'/'split', not both")
    if ids is not None:
        wanted, source = list(ids), "the spec's 'ids'"
    elif split_file is not None:
        wanted, source = read_split_ids(split_file, split), f"split {split!r} of {split_file}"
    else:
        return sorted(available)
    have = set(available)
    missing = [i for i in wanted if i not in have]
    if missing:
        raise DataError(f"{where}: {len(missing)} id(s) of {source} have no image, e.g. {missing[:5]}")
    if not wanted:
        raise DataError(f"{where}: {source} is empty")
    return wanted


# -- near-duplicates ------------------------------------------------------------------------------------------
def region_descriptor(path: Path, side: int = DESCRIPTOR_SIDE, grid: int = GRID, sigma: float = 2.0) -> np.ndarray:
    """(grid * grid, block * block) float32: the high-passed grey image, cut into a grid of blocks, each block
    zero-mean and unit-norm (an all-flat block stays zero)."""
    image = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise DataError(f"cannot decode image file {path}")
    small = cv2.resize(image.astype(np.float32), (side, side), interpolation=cv2.INTER_AREA)
    detail = small - cv2.GaussianBlur(small, (0, 0), sigma)  # texture and noise, without the shading
    b = side // grid
    blocks = detail[: b * grid, : b * grid].reshape(grid, b, grid, b).transpose(0, 2, 1, 3).reshape(grid * grid, -1)
    blocks = blocks - blocks.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(blocks, axis=1, keepdims=True)
    return np.divide(blocks, norms, out=np.zeros_like(blocks), where=norms > 1e-3)


def shared_region_pairs(
    descriptors: np.ndarray, block_threshold: float = BLOCK_THRESHOLD, min_blocks: int = MIN_BLOCKS,
    chunk: int = 512,
) -> list[tuple[int, int, int]]:
    """(i, j, n) for i < j where ``n >= min_blocks`` co-located blocks correlate above ``block_threshold``.

    descriptors: (N, G, D) from :func:`region_descriptor`. Cost: G matrix products of (N, D) x (D, N).
    """
    n, g, _ = descriptors.shape
    pairs = []
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        count = np.zeros((stop - start, n), dtype=np.int16)  # (c, N) blocks that match
        for b in range(g):
            count += descriptors[start:stop, b] @ descriptors[:, b].T >= block_threshold
        for r, j in zip(*np.nonzero(count >= min_blocks), strict=True):
            i = start + int(r)
            if j > i:
                pairs.append((i, int(j), int(count[r, j])))
    return pairs


def group_indices(n: int, pairs: Sequence[tuple[int, int, Any]]) -> list[list[int]]:
    """Connected components of the pair graph (union-find), each sorted, ordered by their smallest member."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, *_ in pairs:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return sorted(groups.values(), key=lambda g: g[0])


# -- drawing splits -------------------------------------------------------------------------------------------
def draw_groups(
    groups: Sequence[Sequence[int]], strata: Sequence[int], target: int, order: Sequence[int], taken: set[int]
) -> list[int]:
    """Members of whole groups, walked in ``order``, until ``target`` images are drawn; each stratum (by the
    group's first member) gets at most its proportional share of ``target`` (of the groups not yet taken)."""
    free = [g for g in order if groups[g][0] not in taken]
    sizes = {}
    for g in free:
        s = strata[groups[g][0]]
        sizes[s] = sizes.get(s, 0) + len(groups[g])
    n_free = sum(sizes.values())
    if target > n_free:
        raise ConfigError(f"cannot draw {target} images from {n_free} remaining")
    quota = {s: round(target * c / n_free) for s, c in sizes.items()}
    drawn: list[int] = []
    counts = dict.fromkeys(sizes, 0)
    for fill in (False, True):  # first within the stratum quotas, then top up with anything left
        for g in free:
            members = groups[g]
            s = strata[members[0]]
            if len(drawn) >= target or members[0] in taken or (not fill and counts[s] >= quota[s]):
                continue
            drawn.extend(members)
            taken.update(members)
            counts[s] += len(members)
    return sorted(drawn)


def make_grouped_splits(
    groups: Sequence[Sequence[int]], strata: Sequence[int], n_eval: int, n_calibration: int, seed: int
) -> dict[str, list[int]]:
    """``eval`` (never trained on), ``train`` (everything else) and ``calibration`` (inside ``train``)."""
    n = sum(len(g) for g in groups)
    order = np.random.default_rng(seed).permutation(len(groups)).tolist()
    taken: set[int] = set()
    eval_idx = draw_groups(groups, strata, n_eval, order, taken)
    calibration = draw_groups(groups, strata, n_calibration, order, taken)
    eval_set = set(eval_idx)
    return {"train": [i for i in range(n) if i not in eval_set], "calibration": calibration, "eval": eval_idx}


def dominant_class(mask: np.ndarray) -> int:
    """The most frequent non-zero class of a label map; 0 when it has none."""
    counts = np.bincount(mask.ravel(), minlength=256)
    counts[0] = counts[255] = 0  # background and ignore never dominate
    return int(np.argmax(counts)) if counts.any() else 0


# -- a whole dataset ------------------------------------------------------------------------------------------
def _image_paths(root: Path, images_dir: str, masks_dir: str) -> tuple[list[str], list[Path], list[Path]]:
    images = sorted(p for p in (root / images_dir).glob("*") if is_image_file(p))
    if not images:
        raise DataError(f"no images in {root / images_dir}")
    masks = [root / masks_dir / f"{p.stem}.png" for p in images]
    missing = [m for m in masks if not m.is_file()]
    if missing:
        raise DataError(f"mask {missing[0]} is missing ({len(missing)} masks missing in {root / masks_dir})")
    return [p.stem for p in images], images, masks


def build_split_record(
    root: Path, n_eval: int, n_calibration: int, seed: int, block_threshold: float = BLOCK_THRESHOLD,
    min_blocks: int = MIN_BLOCKS, images_dir: str = "images", masks_dir: str = "masks",
) -> dict[str, Any]:
    ids, images, masks = _image_paths(root, images_dir, masks_dir)
    descriptors = np.stack([region_descriptor(p) for p in images])  # (N, 16, 625)
    pairs = shared_region_pairs(descriptors, block_threshold, min_blocks)
    groups = group_indices(len(ids), pairs)
    strata = []
    for m in masks:
        label = cv2.imdecode(np.fromfile(str(m), dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        if label is None or label.ndim != 2:
            raise DataError(f"mask {m} is not a single-channel class-index image")
        strata.append(dominant_class(label))
    splits = make_grouped_splits(groups, strata, n_eval, n_calibration, seed)
    twins = [[ids[i] for i in g] for g in groups if len(g) > 1]
    return {
        "dataset": root.name,
        "n_images": len(ids),
        "seed": seed,
        "rule": (
            "eval: whole near-duplicate groups drawn in a numpy default_rng(seed) permutation, stratified by "
            "dominant defect class, never trained on; train: every image not in eval (labels unused); "
            "calibration: labelled subset of train drawn the same way, used only to name clusters"
        ),
        "near_duplicates": {
            "rule": (
                f"grey {DESCRIPTOR_SIDE}x{DESCRIPTOR_SIDE} (cv2 INTER_AREA), minus GaussianBlur sigma 2, "
                f"{GRID}x{GRID} blocks; twins share >= {min_blocks} co-located blocks with normalised "
                f"correlation >= {block_threshold}; groups = connected components"
            ),
            "block_threshold": block_threshold,
            "min_blocks": min_blocks,
            "pairs": len(pairs),
            "groups": twins,
        },
        "counts": {name: len(v) for name, v in splits.items()},
        "dominant_class_counts": {
            name: np.bincount([strata[i] for i in v], minlength=max(strata) + 1).tolist()
            for name, v in splits.items()
        },
        **{name: [ids[i] for i in v] for name, v in splits.items()},
    }
