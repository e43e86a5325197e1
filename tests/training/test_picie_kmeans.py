"""PiCIE's mini-batch k-means: recovery of separated blobs, the update rule, ranks agreeing, edge cases."""

from __future__ import annotations

import threading

import pytest
import torch

from training.methods.picie.kmeans import (
    MiniBatchKMeans,
    assign,
    cluster_sums,
    kmeans_plus_plus,
    lloyd,
    split_for_empty,
)


def _blobs(n_per: int, centers: torch.Tensor, spread: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    k, d = centers.shape
    labels = torch.arange(k).repeat_interleave(n_per)
    points = centers[labels] + spread * torch.randn(k * n_per, d, generator=g)
    perm = torch.randperm(k * n_per, generator=g)
    return points[perm], labels[perm]


def test_streaming_kmeans_recovers_well_separated_blobs():
    g = torch.Generator().manual_seed(0)
    centers = 4.0 * torch.randn(6, 16, generator=g)
    points, truth = _blobs(400, centers, 0.3, seed=1)
    km = MiniBatchKMeans(6, init_batches=3, batches_per_update=1, init_iters=10, chunk_size=257,
                         generator=torch.Generator().manual_seed(2))
    for batch in points.split(200):
        km.add(batch)
    found = km.finish()
    # Every true centre has exactly one found centroid next to it (a permutation), within the noise level.
    dist = torch.cdist(centers, found)
    nearest = dist.argmin(dim=1)
    assert sorted(nearest.tolist()) == list(range(6))
    assert float(dist.min(dim=1).values.max()) < 0.1
    pred, _ = assign(points, found)
    assert torch.equal(nearest[truth], pred)  # every point in its blob's cluster
    assert km.loss == pytest.approx(16 * 0.3**2, rel=0.3)  # mean squared distance ~ d * sigma^2


def test_update_rule_by_hand():
    km = MiniBatchKMeans(2, init_batches=1)
    init = torch.tensor([[0.0, 0.0], [10.0, 10.0]])
    km.init_from(torch.tensor([[0.0, 1.0], [0.0, -1.0], [10.0, 10.0]]), init)
    assert km.counts.tolist() == [2.0, 1.0]
    km.update(torch.tensor([[3.0, 0.0], [1.0, 0.0], [11.0, 10.0]]))
    # cluster 0: count 4, lr = 2/4, mean (2, 0) -> (1, 0); cluster 1: count 2, lr = 1/2, mean (11, 10) -> (10.5, 10)
    assert torch.allclose(km.centroids, torch.tensor([[1.0, 0.0], [10.5, 10.0]]), atol=1e-5)
    assert km.counts.tolist() == [4.0, 2.0]


def test_unhit_clusters_keep_their_centroid_and_leftover_batches_are_dropped():
    km = MiniBatchKMeans(3, init_batches=1, batches_per_update=2)
    km.init_from(torch.tensor([[0.0], [5.0], [9.0]]), torch.tensor([[0.0], [5.0], [9.0]]))
    km.add(torch.tensor([[1.0]]))
    km.add(torch.tensor([[0.0]]))  # second of the pair: one update with both points
    before = km.centroids.clone()
    km.add(torch.tensor([[9.5]]))  # leftover, never used
    out = km.finish()
    assert torch.equal(out, before)
    assert float(out[1, 0]) == 5.0 and float(out[2, 0]) == 9.0
    assert len(km.step_losses) == 2


def test_finish_initialises_from_short_passes_and_errors_on_too_few_points():
    km = MiniBatchKMeans(2, init_batches=5, generator=torch.Generator().manual_seed(0))
    km.add(torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0]]))
    assert km.finish().shape == (2, 2)
    with pytest.raises(ValueError, match="only 1 points"):
        tiny = MiniBatchKMeans(2, init_batches=1)
        tiny.add(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="no points"):
        MiniBatchKMeans(2).finish()


def test_max_init_points_bounds_the_init_pool():
    km = MiniBatchKMeans(3, init_batches=2, max_init_points=50, generator=torch.Generator().manual_seed(0))
    km.add(torch.randn(400, 4))
    km.add(torch.randn(400, 4))
    assert float(km.counts.sum()) == 50  # counts come from the subsampled pool


def test_empty_cluster_is_split_from_the_largest():
    centroids = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    out, counts = split_for_empty(centroids, torch.tensor([10.0, 0.0, 4.0]))
    assert counts.tolist() == [5.0, 5.0, 4.0]
    assert torch.allclose(out[1], torch.tensor([1 + 1 / 1024, 1 - 1 / 1024]))
    assert torch.allclose(out[0], torch.tensor([1 - 1 / 1024, 1 + 1 / 1024]))
    # Lloyd started with two identical seeds still ends with two distinct, non-empty clusters.
    points = torch.cat([torch.zeros(5, 2), torch.tensor([[4.0, 0.0]]).expand(5, 2)])
    final = lloyd(points, torch.tensor([[1.0, 0.0], [1.0, 0.0]]), iters=5)
    labels, _ = assign(points, final)
    assert sorted(torch.bincount(labels).tolist()) == [5, 5]


def test_kmeans_plus_plus_picks_distinct_points_and_is_seeded():
    points = torch.cat([torch.zeros(50, 2), torch.full((50, 2), 10.0), torch.full((50, 2), -10.0)])
    a = kmeans_plus_plus(points, 3, torch.Generator().manual_seed(3))
    b = kmeans_plus_plus(points, 3, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert len({tuple(r.tolist()) for r in a}) == 3
    with pytest.raises(ValueError, match="at least 4 points"):
        kmeans_plus_plus(points[:3], 4, torch.Generator())


def test_cluster_sums_are_one_hot_sums():
    points = torch.randn(100, 5)
    labels = torch.randint(0, 4, (100,))
    counts, sums = cluster_sums(points, labels, 4, chunk_size=7)
    for k in range(4):
        assert counts[k] == (labels == k).sum()
        assert torch.allclose(sums[k].float(), points[labels == k].sum(0), atol=1e-5)


class ThreadAllReduce:
    """An all-reduce-sum between ``world`` threads (stands in for torch.distributed in the test)."""

    def __init__(self, world: int):
        self.world = world
        self.barrier = threading.Barrier(world)
        self.slots: list[torch.Tensor | None] = [None] * world

    def for_rank(self, rank: int):
        def reduce(t: torch.Tensor) -> torch.Tensor:
            self.slots[rank] = t.clone()
            self.barrier.wait()
            total = sum(s for s in self.slots)  # type: ignore[misc]
            self.barrier.wait()
            return total

        return reduce


def test_ranks_agree_with_one_process_fed_their_union():
    g = torch.Generator().manual_seed(0)
    init = torch.randn(4, 3, generator=g)
    init_points = torch.randn(40, 3, generator=g)
    batches = [torch.randn(30, 3, generator=g) for _ in range(4)]
    single = MiniBatchKMeans(4, init_batches=1)
    single.init_from(init_points, lloyd(init_points, init, iters=3))
    for b in batches:
        single.add(b)
    reduce = ThreadAllReduce(2)
    results: dict[int, MiniBatchKMeans] = {}

    def run(rank: int) -> None:
        km = MiniBatchKMeans(4, init_batches=1, all_reduce_sum=reduce.for_rank(rank), rank=rank)
        mine = init_points[rank::2]
        km.init_from(mine, lloyd(mine, init, iters=3, all_reduce_sum=km.all_reduce_sum))
        for b in batches:
            km.add(b[rank::2])  # each rank sees half of every batch
        results[rank] = km

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    for km in results.values():
        assert torch.allclose(km.centroids, single.centroids, atol=1e-5)
        assert torch.equal(km.counts, single.counts)
        assert km.loss == pytest.approx(single.loss, rel=1e-6)
