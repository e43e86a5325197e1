"""PiCIE's streaming mini-batch k-means in torch, on the device of the points (docs/METHODS.md §5.5).

Official: janghyuncho/PiCIE ``commons.py::run_mini_batch_kmeans`` (L52-133), ``utils.py::get_init_centroids``
(L189-196). Points arrive one loader batch at a time:

1. The first ``init_batches`` batches are pooled and clustered from scratch; ``counts`` start as the sizes of
   that clustering's final assignment.
2. After that, every ``batches_per_update`` batches are pooled and each point is assigned to its nearest
   centroid (squared L2); for each hit cluster k: n_k points with mean m_k,
   ``counts[k] += n_k;  lr = n_k / (counts[k] + 1e-6);  c_k <- (1 - lr) c_k + lr m_k``.
3. Batches left over at the end (fewer than ``batches_per_update``) are dropped, as officially. The loss is the
   mean over 1 and 2 of each step's mean squared distance to the nearest centroid.

Departures, all deliberate:
* Init: the official code calls faiss ``Clustering`` (version dependent, not reproducible across faiss
  versions). Ours is greedy k-means++ seeding (Arthur & Vassilvitskii 2007, with scikit-learn's 2 + ln K
  candidates per step; D^2 sampling from a seeded CPU ``torch.Generator``) followed by ``init_iters`` Lloyd
  iterations; an empty cluster is re-seeded
  the faiss way, by splitting the largest cluster's centroid c into c(1 +- eps) with alternating signs.
* If the whole pass has fewer than ``init_batches`` batches, init runs on what there is at :meth:`finish` (the
  official code crashes there).
* ``max_init_points`` bounds the init pool (each init batch is subsampled to ``max_init_points/init_batches``);
  the official run clusters all 20 x 256 x 6400 points (about 17 GB of float32).
* Distributed: per-cluster counts, sums and loss terms go through ``all_reduce_sum``, so every rank computes the
  same centroids as one process fed the union of the ranks' batches. k-means++ seeding runs on rank 0's init
  pool and is broadcast (others contribute zeros to the sum); Lloyd iterations then use every rank's points.
  Every rank must feed the same number of batches (DistributedSampler pads to ensure this).

Distances are computed as ||x||^2 - 2 x.c + ||c||^2 in chunks of ``chunk_size`` points (memory O(chunk * K)),
with float32 matmuls forced to full precision (no TF32). Per-cluster sums use a one-hot matmul on CUDA rather
than ``index_add_`` (atomics) so GPU results are deterministic.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

AllReduce = Callable[[torch.Tensor], torch.Tensor]
_SPLIT_EPS = 1.0 / 1024.0  # faiss's relative perturbation when splitting a cluster for an empty one


@contextlib.contextmanager
def full_precision_matmul() -> Iterator[None]:
    """Disable TF32 for float32 matmuls in this block (TF32's 10-bit mantissa blurs nearest-centroid ties)."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def assign(points: torch.Tensor, centroids: torch.Tensor, chunk_size: int = 65536
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of each point: labels (N,) int64 and squared L2 distances (N,) float32."""
    c = centroids.to(points.dtype)
    c_sq = (c * c).sum(dim=1)  # (K,)
    labels, dists = [], []
    with full_precision_matmul():
        for x in points.split(chunk_size):
            d = (x * x).sum(dim=1, keepdim=True) - 2 * x @ c.T + c_sq  # (n, K)
            best, idx = d.min(dim=1)
            labels.append(idx)
            dists.append(best.clamp_min(0))
    return torch.cat(labels), torch.cat(dists)


def cluster_sums(points: torch.Tensor, labels: torch.Tensor, n_clusters: int, chunk_size: int = 65536
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cluster counts (K,) and coordinate sums (K, D) in float64.

    On CUDA a one-hot matmul (``index_add_`` uses atomics there, so its float sums vary run to run); on the CPU
    ``index_add_``, which is deterministic and K times cheaper."""
    counts = torch.bincount(labels, minlength=n_clusters).to(torch.float64)
    sums = torch.zeros(n_clusters, points.shape[1], dtype=torch.float64, device=points.device)
    if points.device.type == "cpu":
        return counts, sums.index_add_(0, labels, points.to(torch.float64))
    with full_precision_matmul():
        for x, y in zip(points.split(chunk_size), labels.split(chunk_size), strict=True):
            sums += (F.one_hot(y, n_clusters).to(x.dtype).T @ x).to(torch.float64)
    return counts, sums


def kmeans_plus_plus(points: torch.Tensor, n_clusters: int, generator: torch.Generator,
                     n_trials: int | None = None) -> torch.Tensor:
    """Greedy k-means++ seeds (K, D) drawn from ``points`` (M, D), random numbers from the CPU ``generator``.

    Each step draws ``n_trials`` candidates with probability proportional to D^2 and keeps the one that lowers the
    potential most (scikit-learn's rule, default 2 + ln K trials; ``n_trials=1`` is plain k-means++)."""
    m = points.shape[0]
    if m < n_clusters:
        raise ValueError(f"k-means++ needs at least {n_clusters} points, got {m}")
    trials = n_trials if n_trials is not None else 2 + int(math.log(n_clusters))
    x_sq = (points * points).sum(dim=1)  # (M,)

    def sq_dist_to(idx: torch.Tensor) -> torch.Tensor:  # (T,) candidate indices -> (T, M)
        c = points[idx]
        return (x_sq.unsqueeze(0) - 2 * c @ points.T + (c * c).sum(dim=1, keepdim=True)).clamp_min(0)

    first = torch.randint(m, (1,), generator=generator).to(points.device)
    seeds = [first]
    with full_precision_matmul():
        d2 = sq_dist_to(first)[0]
        for _ in range(1, n_clusters):
            cum = d2.to(torch.float64).cumsum(0)
            u = torch.rand(trials, generator=generator, dtype=torch.float64).to(points.device)
            if float(cum[-1]) > 0:
                cand = torch.searchsorted(cum, u * cum[-1]).clamp_max(m - 1)
            else:  # every point coincides with a seed: any points will do
                cand = (u * m).long().clamp_max(m - 1)
            new_d2 = torch.minimum(d2.unsqueeze(0), sq_dist_to(cand))  # (T, M)
            best = int(new_d2.to(torch.float64).sum(dim=1).argmin())
            seeds.append(cand[best : best + 1])
            d2 = new_d2[best]
    return points[torch.cat(seeds)]


def split_for_empty(centroids: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-seed each empty cluster by splitting the currently largest one (faiss's rule, deterministic choice)."""
    centroids, counts = centroids.clone(), counts.clone()
    sign = torch.ones(centroids.shape[1], dtype=centroids.dtype, device=centroids.device)
    sign[1::2] = -1
    for j in torch.nonzero(counts == 0).flatten().tolist():
        i = int(counts.argmax())
        centroids[j] = centroids[i] * (1 + _SPLIT_EPS * sign)
        centroids[i] = centroids[i] * (1 - _SPLIT_EPS * sign)
        counts[j] = counts[i] / 2
        counts[i] -= counts[j]
    return centroids, counts


def lloyd(points: torch.Tensor, centroids: torch.Tensor, iters: int, all_reduce_sum: AllReduce = _identity,
          chunk_size: int = 65536) -> torch.Tensor:
    """``iters`` Lloyd iterations from ``centroids`` (K, D); statistics are summed over ranks."""
    k = centroids.shape[0]
    for _ in range(iters):
        labels, _ = assign(points, centroids, chunk_size)
        counts, sums = cluster_sums(points, labels, k, chunk_size)
        counts, sums = all_reduce_sum(counts), all_reduce_sum(sums)
        new = (sums / counts.clamp_min(1).unsqueeze(1)).to(centroids.dtype)
        new = torch.where((counts > 0).unsqueeze(1), new, centroids)
        centroids, _ = split_for_empty(new, counts)
    return centroids


class MiniBatchKMeans:
    """Streaming mini-batch k-means with PiCIE's update rule; feed batches with :meth:`add`, then :meth:`finish`.

    Example:
        >>> km = MiniBatchKMeans(4, init_batches=2, generator=torch.Generator().manual_seed(0))
        >>> for _ in range(5):
        ...     km.add(torch.randn(64, 8))
        >>> km.finish().shape
        torch.Size([4, 8])
    """

    def __init__(self, n_clusters: int, *, init_batches: int = 20, batches_per_update: int = 1, init_iters: int = 20,
                 max_init_points: int | None = None, chunk_size: int = 65536,
                 generator: torch.Generator | None = None, all_reduce_sum: AllReduce = _identity, rank: int = 0):
        if n_clusters < 1 or init_batches < 1 or batches_per_update < 1 or init_iters < 0 or chunk_size < 1:
            raise ValueError("n_clusters, init_batches, batches_per_update and chunk_size must be >= 1, "
                             "init_iters >= 0")
        if max_init_points is not None and max_init_points < n_clusters:
            raise ValueError(f"max_init_points ({max_init_points}) must be at least n_clusters ({n_clusters})")
        self.n_clusters = n_clusters
        self.init_batches = init_batches
        self.batches_per_update = batches_per_update
        self.init_iters = init_iters
        self.max_init_points = max_init_points
        self.chunk_size = chunk_size
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.all_reduce_sum = all_reduce_sum
        self.rank = rank
        self.centroids: torch.Tensor | None = None  # (K, D) float32
        self.counts: torch.Tensor | None = None  # (K,) float64
        self.step_losses: list[float] = []
        self._pending: list[torch.Tensor] = []

    @property
    def initialised(self) -> bool:
        return self.centroids is not None

    @property
    def loss(self) -> float:
        """Mean over init and updates of the mean squared distance to the nearest centroid (official meter)."""
        return sum(self.step_losses) / len(self.step_losses) if self.step_losses else float("nan")

    def add(self, points: torch.Tensor) -> None:
        """Feed one batch of points (N, D) (already normalised as wanted)."""
        if points.ndim != 2:
            raise ValueError(f"expected points of shape (N, D), got {tuple(points.shape)}")
        points = points.detach().to(torch.float32)
        if not self.initialised:
            self._pending.append(self._subsample_for_init(points))
            if len(self._pending) == self.init_batches:
                self._initialise(torch.cat(self._pending))
                self._pending = []
            return
        self._pending.append(points)
        if len(self._pending) == self.batches_per_update:
            self.update(torch.cat(self._pending))
            self._pending = []

    def finish(self) -> torch.Tensor:
        """The centroids (K, D). Initialises from the pooled batches if fewer than ``init_batches`` came."""
        if not self.initialised:
            if not self._pending:
                raise ValueError("k-means got no points")
            self._initialise(torch.cat(self._pending))
        self._pending = []  # leftovers short of batches_per_update are dropped, as officially
        assert self.centroids is not None
        return self.centroids

    def _subsample_for_init(self, points: torch.Tensor) -> torch.Tensor:
        if self.max_init_points is None:
            return points
        per_batch = math.ceil(self.max_init_points / self.init_batches)
        if points.shape[0] <= per_batch:
            return points
        keep = torch.randperm(points.shape[0], generator=self.generator)[:per_batch].to(points.device)
        return points[keep]

    def _initialise(self, points: torch.Tensor) -> None:
        n_total = int(self.all_reduce_sum(torch.tensor(float(points.shape[0]), device=points.device)))
        if n_total < self.n_clusters:
            raise ValueError(f"k-means with K={self.n_clusters} got only {n_total} points to initialise from")
        if self.rank == 0:
            seeds = kmeans_plus_plus(points, self.n_clusters, self.generator)
        else:
            seeds = torch.zeros(self.n_clusters, points.shape[1], dtype=points.dtype, device=points.device)
        seeds = self.all_reduce_sum(seeds)  # broadcast rank 0's seeds
        self.init_from(points, lloyd(points, seeds, self.init_iters, self.all_reduce_sum, self.chunk_size))

    def init_from(self, points: torch.Tensor, centroids: torch.Tensor) -> None:
        """Start from given init ``centroids`` (K, D): counts and the first loss term from ``points``' assignment.

        This is the official code's step after faiss returns (``faiss_module.search`` on the init points)."""
        self.centroids = centroids.detach().to(device=points.device, dtype=torch.float32).clone()
        labels, dists = assign(points, self.centroids, self.chunk_size)
        self.counts = self.all_reduce_sum(torch.bincount(labels, minlength=self.n_clusters).to(torch.float64))
        self._record_loss(dists)

    def update(self, points: torch.Tensor) -> None:
        """One mini-batch update with pooled points (N, D) (official rule, module docstring step 2)."""
        assert self.centroids is not None and self.counts is not None, "initialise first"
        labels, dists = assign(points, self.centroids, self.chunk_size)
        n_k, sums = cluster_sums(points, labels, self.n_clusters, self.chunk_size)
        n_k, sums = self.all_reduce_sum(n_k), self.all_reduce_sum(sums)
        hit = n_k > 0
        self.counts = self.counts + n_k
        lr = (n_k / (self.counts + 1e-6)).unsqueeze(1)  # (K, 1) float64
        mean = (sums / n_k.clamp_min(1).unsqueeze(1)).to(torch.float32).to(torch.float64)  # float32 mean, as numpy
        new = ((1 - lr) * self.centroids.to(torch.float64) + lr * mean).to(torch.float32)
        self.centroids = torch.where(hit.unsqueeze(1), new, self.centroids)
        self._record_loss(dists)

    def _record_loss(self, dists: torch.Tensor) -> None:
        stats = torch.stack([dists.to(torch.float64).sum(), torch.tensor(float(dists.numel()), dtype=torch.float64,
                                                                          device=dists.device)])
        total, n = self.all_reduce_sum(stats).tolist()
        self.step_losses.append(total / max(n, 1.0))
