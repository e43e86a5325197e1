"""DataLoaders whose batches are a pure function of (seed, epoch, position), so a resumed run sees the same data.

Two pieces make that so:

* :class:`EpochSampler` draws each epoch's order from ``(seed, epoch, stream)`` alone and can start at any
  global batch. The checkpoint stores only the epoch and the number of batches consumed; nothing about the
  sampler's RNG. Under DDP, global batch ``g`` is ``order[g*W*B:(g+1)*W*B]`` and rank ``r`` takes its
  ``r``-th slice of ``B`` images, so W ranks x batch B see exactly the images of one process with batch W*B.
* :class:`SeededDataset` seeds python ``random``, numpy and torch from a per-sample seed derived from
  ``(seed, epoch, stream, global position)`` before calling the dataset, so random crops do not depend on the
  number of workers, on which worker loads an item, or on what was loaded before. In the main process
  (``num_workers=0``) it restores the global RNG states afterwards, so loading never shifts the training RNG.
  It also calls the dataset's ``set_epoch(epoch)`` (when it has one) from the sampled key, which reaches
  persistent worker processes too (a call on the main process's copy would not).

Datasets therefore draw their randomness from the global RNGs (not from generators they create themselves).
The last incomplete global batch of an epoch is dropped. :class:`RunLoaders` holds the loaders of one run.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, get_worker_info
from torch.utils.data._utils.collate import default_collate

from training.errors import DataError

if TYPE_CHECKING:
    from training.config import TrainConfig

_MASK64 = (1 << 64) - 1


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays (wrapping arithmetic): a cheap, well-mixed hash."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def derive_seeds(*keys: int, positions: np.ndarray | None = None) -> np.ndarray:
    """uint64 seeds hashed from integer ``keys`` (and one per entry of ``positions``)."""
    with np.errstate(over="ignore"):
        h = np.zeros(1, dtype=np.uint64)
        for key in keys:
            h = _splitmix64(h ^ np.uint64(key & _MASK64))
        if positions is not None:
            h = _splitmix64(h ^ positions.astype(np.uint64))
    return h


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy's global RNG and torch (CPU and every CUDA device)."""
    seed &= _MASK64
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


class EpochSampler(Sampler[tuple[int, int, int]]):
    """Yields ``(dataset index, sample seed, epoch)`` for this rank's share of every full global batch."""

    def __init__(self, n_items: int, *, batch_size: int, seed: int, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1, stream: int = 0):
        self.n_items = n_items
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.stream = stream
        self.epoch = 0
        self.start_batch = 0

    @property
    def batches_per_epoch(self) -> int:
        return self.n_items // (self.batch_size * self.world_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's order and skip the first ``start_batch`` global batches (resume mid-epoch)."""
        self.epoch = epoch
        self.start_batch = min(start_batch, self.batches_per_epoch)

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        n_batches, b, w = self.batches_per_epoch, self.batch_size, self.world_size
        if self.shuffle:
            order_seed = int(derive_seeds(self.seed, self.epoch, self.stream, 0x0DE5)[0])
            order = np.random.default_rng(order_seed).permutation(self.n_items)
        else:
            order = np.arange(self.n_items)
        order = order[: n_batches * w * b].reshape(n_batches, w, b)  # (global batch, rank, slot)
        positions = np.arange(n_batches * w * b).reshape(n_batches, w, b)
        seeds = derive_seeds(self.seed, self.epoch, self.stream, positions=positions)
        for g in range(self.start_batch, n_batches):
            for slot in range(b):
                yield int(order[g, self.rank, slot]), int(seeds[g, self.rank, slot]), self.epoch


class ShardSampler(Sampler[int]):
    """Evaluation: every ``world_size``-th index from ``rank``, in order (no padding, no duplicates)."""

    def __init__(self, n_items: int, *, rank: int = 0, world_size: int = 1):
        self.indices = list(range(rank, n_items, world_size))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


class SeededDataset(Dataset):
    """Wraps a dataset: ``ds[(index, seed, epoch)]`` seeds the global RNGs with ``seed``, sets the dataset's
    epoch, and returns ``inner[index]``."""

    def __init__(self, inner: Dataset):
        self.inner = inner
        self._set_epoch = getattr(inner, "set_epoch", None)
        self._epoch: int | None = None

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int, int]) -> Any:
        index, seed, epoch = key
        if self._set_epoch is not None and epoch != self._epoch:
            self._set_epoch(epoch)
            self._epoch = epoch
        if get_worker_info() is not None:  # a worker process owns its RNGs
            seed_everything_cpu(seed)
            return self.inner[index]
        saved = (random.getstate(), np.random.get_state(), torch.get_rng_state())
        try:
            seed_everything_cpu(seed)
            return self.inner[index]
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.set_rng_state(saved[2])


def seed_everything_cpu(seed: int) -> None:
    """Like :func:`seed_everything` without touching CUDA generators (data loading runs on the CPU)."""
    seed &= _MASK64
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.random.default_generator.manual_seed(seed)


def train_loader(dataset: Dataset, *, batch_size: int, seed: int, num_workers: int, rank: int, world_size: int,
                 pin_memory: bool, stream: int = 0, what: str = "data.train") -> tuple[DataLoader, EpochSampler]:
    """Shuffled, per-sample-seeded loader of full batches, and its sampler (``set_epoch`` before iterating)."""
    n = len(dataset)  # type: ignore[arg-type]
    sampler = EpochSampler(n, batch_size=batch_size, seed=seed, rank=rank, world_size=world_size, stream=stream)
    if sampler.batches_per_epoch == 0:
        raise DataError(f"{what} has {n} images, fewer than one batch of {batch_size * world_size} "
                        f"(train.batch_size {batch_size} x {world_size} processes)")
    hint = f"train on crops ({what}.crop) or one whole frame a step (train.batch_size=1)"
    loader = DataLoader(SeededDataset(dataset), batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                        pin_memory=pin_memory, drop_last=False, persistent_workers=num_workers > 0,
                        collate_fn=functools.partial(collate_same_size, what=what, hint=hint),
                        generator=torch.Generator().manual_seed(seed))  # own generator: keeps the global RNG intact
    return loader, sampler


def eval_loader(dataset: Dataset, *, batch_size: int, num_workers: int, rank: int, world_size: int,
                pin_memory: bool) -> DataLoader:
    sampler = ShardSampler(len(dataset), rank=rank, world_size=world_size)  # type: ignore[arg-type]
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      pin_memory=pin_memory, generator=torch.Generator().manual_seed(0))


@dataclass
class RunLoaders:
    """The loaders of one training run and its geometry."""

    train: DataLoader
    sampler: EpochSampler
    # ctx.train_loader: the same images in another order and other random crops (stream 1), for hooks such as
    # PiCIE's per-epoch k-means; it never shifts the training stream.
    aux: DataLoader
    aux_sampler: EpochSampler
    evaluation: DataLoader | None
    steps_per_epoch: int  # optimiser steps (global batches) per epoch
    total_steps: int  # min(epochs * steps_per_epoch, max_steps)
    class_names: list[str] | None  # of the labelled split
    n_classes: int  # len(class_names), else the main head's K

    @classmethod
    def build(cls, train_dataset: Dataset, eval_dataset: Dataset | None, cfg: TrainConfig, *, rank: int,
              world_size: int, pin_memory: bool, main_clusters: int) -> RunLoaders:
        common = dict(batch_size=cfg.batch_size, seed=cfg.seed, num_workers=cfg.num_workers, rank=rank,
                      world_size=world_size, pin_memory=pin_memory)
        train, sampler = train_loader(train_dataset, stream=0, **common)
        aux, aux_sampler = train_loader(train_dataset, stream=1, **common)
        steps = sampler.batches_per_epoch
        total = cfg.epochs * steps
        evaluation = None
        if eval_dataset is not None:
            evaluation = eval_loader(eval_dataset, batch_size=cfg.eval_batch_size, num_workers=cfg.num_workers,
                                     rank=rank, world_size=world_size, pin_memory=pin_memory)
        class_names = getattr(eval_dataset, "class_names", None)
        return cls(train=train, sampler=sampler, aux=aux, aux_sampler=aux_sampler, evaluation=evaluation,
                   steps_per_epoch=steps, total_steps=min(total, cfg.max_steps) if cfg.max_steps else total,
                   class_names=class_names, n_classes=len(class_names) if class_names else main_clusters)


class HookInterrupted(Exception):
    """A stop was requested while an epoch hook iterated :class:`StoppableLoader` (its pass is incomplete)."""


class StoppableLoader:
    """``ctx.train_loader``: the aux loader; while ``armed``, a requested stop ends a hook's pass between two
    batches (:class:`HookInterrupted`), so Ctrl-C during PiCIE's k-means over the training set takes seconds,
    not the whole pass. Everything else (``len``, ``.dataset``) is the loader's."""

    def __init__(self, loader: DataLoader, should_stop: Any):
        self.loader = loader
        self.should_stop = should_stop
        self.armed = False

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            if self.armed and self.should_stop():
                raise HookInterrupted
            yield batch

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        if name == "loader":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.loader, name)


# -- whole images in order: fitting and scoring the baselines ----------------------------------------------------
def image_loader(dataset: Dataset, *, batch_size: int, num_workers: int = 0, limit: int | None = None,
                 seed: int = 0) -> DataLoader:
    """Ordered loader of whole images; ``limit`` keeps a seeded random subset of that many images."""
    n = len(dataset)  # type: ignore[arg-type]
    if limit is not None and limit < n:
        keep = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit].sort().values
        dataset = Subset(dataset, keep.tolist())
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      collate_fn=collate_same_size)


def collate_same_size(items: list[Any], what: str = "images", hint: str | None = None) -> Any:
    """default_collate, with a clear error when whole images of different sizes meet in one batch (a folder of
    frames in two orientations, say) instead of torch.stack's."""
    sizes = {tuple(item["image"].shape) for item in items
             if isinstance(item, dict) and isinstance(item.get("image"), torch.Tensor)}
    if len(sizes) > 1:
        shown = ", ".join("x".join(map(str, size[-2:])) for size in sorted(sizes)[:4])
        raise DataError(f"{what}: frames of different sizes ({shown}) in one batch: "
                        f"{hint or 'use --batch-size 1 (or a dataset spec with eval_crop / short_side)'}")
    return default_collate(items)
