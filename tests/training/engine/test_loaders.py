import random
from typing import ClassVar

import numpy as np
import pytest
import torch

from tests.training.engine.toy_methods import ToyImages
from training.errors import DataError
from training.loaders import EpochSampler, SeededDataset, train_loader


def _batches(sampler, b):
    items = list(sampler)
    return [items[i:i + b] for i in range(0, len(items), b)]


def test_ranks_split_each_global_batch_like_one_process_with_the_whole_batch():
    single = _batches(EpochSampler(26, batch_size=8, seed=3), 8)
    ranks = [_batches(EpochSampler(26, batch_size=4, seed=3, rank=r, world_size=2), 4) for r in range(2)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 3  # 26 // 8: the incomplete last batch is dropped
    for g, batch in enumerate(single):
        assert batch == ranks[0][g] + ranks[1][g]  # same images, same per-sample seeds


def test_epochs_reshuffle_and_resuming_skips_exactly_the_consumed_batches():
    sampler = EpochSampler(20, batch_size=4, seed=0)
    sampler.set_epoch(0)
    epoch0 = list(sampler)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert sorted(i for i, _, _ in epoch0) == sorted(i for i, _, _ in epoch1) == list(range(20))
    assert [i for i, _, _ in epoch0] != [i for i, _, _ in epoch1]
    assert {e for _, _, e in epoch1} == {1}
    sampler.set_epoch(1, start_batch=3)
    assert list(sampler) == epoch1[12:]
    assert len(sampler) == 8
    other_stream = EpochSampler(20, batch_size=4, seed=0, stream=1)
    other_stream.set_epoch(1)
    assert list(other_stream) != epoch1


def test_seeded_dataset_repeats_items_and_leaves_the_global_rng_alone():
    ds = SeededDataset(ToyImages(4, size=12, crop=6))
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    expected = (torch.rand(1).item(), np.random.rand(), random.random())
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    first = ds[(2, 1234, 0)]["image"]
    again = ds[(2, 1234, 0)]["image"]
    other = ds[(2, 999, 0)]["image"]
    assert torch.equal(first, again)
    assert not torch.equal(first, other)  # another seed, another crop
    assert (torch.rand(1).item(), np.random.rand(), random.random()) == expected


def test_seeded_dataset_forwards_the_epoch():
    class WithEpoch(ToyImages):
        epochs: ClassVar[list[int]] = []

        def set_epoch(self, epoch):
            self.epochs.append(epoch)

    inner = WithEpoch(4)
    ds = SeededDataset(inner)
    for key in [(0, 1, 0), (1, 1, 0), (0, 1, 2)]:
        ds[key]
    assert inner.epochs == [0, 2]


@pytest.mark.parametrize("workers", [2])
def test_batches_do_not_depend_on_the_number_of_workers(workers):
    dataset = ToyImages(12, size=12, crop=6)
    kwargs = dict(batch_size=4, seed=1, rank=0, world_size=1, pin_memory=False)
    loaders = [train_loader(dataset, num_workers=n, **kwargs) for n in (0, workers)]
    outputs = []
    for loader, sampler in loaders:
        sampler.set_epoch(1)
        outputs.append([b["image"] for b in loader])
    assert len(outputs[0]) == 3
    for a, b in zip(*outputs, strict=True):
        assert torch.equal(a, b)


def test_too_few_images_for_one_batch_is_a_data_error():
    with pytest.raises(DataError, match="3 images, fewer than one batch of 8"):
        train_loader(ToyImages(3), batch_size=4, seed=0, num_workers=0, rank=0, world_size=2, pin_memory=False)
