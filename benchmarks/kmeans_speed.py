"""Speed and quality of PiCIE's torch mini-batch k-means against scikit-learn's ``MiniBatchKMeans``.

Both see the same points in the same batches: ``--points`` L2-normalised ``--dim``-d features (a seeded mixture
of ``--clusters`` directions plus noise, like PiCIE's cosine features) split into ``--batches`` batches, one pass.

* ours: ``training.methods.picie.MiniBatchKMeans`` (init on the first ``--init-batches`` batches: k-means++ then
  ``--init-iters`` Lloyd iterations, then PiCIE's update rule batch by batch) on ``--device``.
* scikit-learn: ``MiniBatchKMeans(init="k-means++", n_init=1).partial_fit`` on each batch (its first call
  initialises from that batch; scikit-learn does no Lloyd iterations at init and may reassign small clusters).

Reports the median wall time over ``--repeats`` runs (after one warm-up run each), the ratio sklearn / ours, and
the inertia per point (mean squared distance to the nearest centroid) of every timed run of both, against the optimum.
``--write`` saves ``benchmarks/results/kmeans_speed.{json,md}``.

Example (the brief's size)::

    .venv/bin/python benchmarks/kmeans_speed.py --points 200000 --dim 128 --clusters 27 --batches 50 --write
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.methods.picie.kmeans import MiniBatchKMeans, assign  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--points", type=int, default=200_000, help="number of points (all batches together)")
    p.add_argument("--dim", type=int, default=128, help="feature dimension")
    p.add_argument("--clusters", type=int, default=27, help="K")
    p.add_argument("--batches", type=int, default=50, help="number of batches the points are split into")
    p.add_argument("--init-batches", type=int, default=1, help="batches pooled for our init (PiCIE: 20)")
    p.add_argument("--init-iters", type=int, default=20, help="Lloyd iterations of our init (PiCIE: 20)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per implementation")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (ours; sklearn is CPU)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch and sklearn (default: as is)")
    p.add_argument("--noise", type=float, default=0.35, help="noise around each direction before normalising")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--write", action="store_true", help="write benchmarks/results/kmeans_speed.{json,md}")
    return p.parse_args(argv)


def make_centres(points: torch.Tensor, args: argparse.Namespace) -> torch.Tensor:
    """The generating directions of :func:`make_points` (same seed), for the optimum's cluster assignment."""
    g = torch.Generator().manual_seed(args.seed)
    return torch.nn.functional.normalize(torch.randn(args.clusters, args.dim, generator=g), dim=1)


def make_points(n: int, dim: int, k: int, noise: float, seed: int) -> torch.Tensor:
    """Seeded unit-norm points around ``k`` random directions, shuffled. (n, dim) float32."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(k, dim, generator=g), dim=1)
    labels = torch.randint(0, k, (n,), generator=g)
    points = centres[labels] + noise * torch.randn(n, dim, generator=g) / dim**0.5
    return torch.nn.functional.normalize(points, dim=1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_ours(batches: list[torch.Tensor], args: argparse.Namespace, device: torch.device, seed: int
             ) -> tuple[float, torch.Tensor]:
    batches = [b.to(device) for b in batches]
    _sync(device)
    start = time.perf_counter()
    km = MiniBatchKMeans(args.clusters, init_batches=args.init_batches, init_iters=args.init_iters,
                         generator=torch.Generator().manual_seed(seed))
    for b in batches:
        km.add(b)
    centroids = km.finish()
    _sync(device)
    return time.perf_counter() - start, centroids.cpu()


def run_sklearn(batches: list[np.ndarray], args: argparse.Namespace, seed: int) -> tuple[float, torch.Tensor]:
    from sklearn.cluster import MiniBatchKMeans as SkMiniBatchKMeans

    start = time.perf_counter()
    km = SkMiniBatchKMeans(n_clusters=args.clusters, init="k-means++", n_init=1, batch_size=len(batches[0]),
                           random_state=seed)
    for b in batches:
        km.partial_fit(b)
    return time.perf_counter() - start, torch.from_numpy(km.cluster_centers_.astype(np.float32))


def inertia(points: torch.Tensor, centroids: torch.Tensor) -> float:
    _, d = assign(points, centroids)
    return float(d.to(torch.float64).sum())


def measure(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    points = make_points(args.points, args.dim, args.clusters, args.noise, args.seed)
    batches = list(points.chunk(args.batches))
    np_batches = [b.numpy() for b in batches]
    times: dict[str, list[float]] = {"ours": [], "sklearn": []}
    per_point: dict[str, list[float]] = {"ours": [], "sklearn": []}  # inertia / point of every timed run
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=args.threads):
        for repeat in range(args.repeats + 1):  # run 0 is a warm-up
            for name, run in (("ours", lambda s: run_ours(batches, args, device, s)),
                              ("sklearn", lambda s: run_sklearn(np_batches, args, s))):
                t, centroids = run(args.seed + repeat)
                if repeat:
                    times[name].append(t)
                    per_point[name].append(inertia(points, centroids) / args.points)
    median = {k: statistics.median(v) for k, v in times.items()}
    # The reference: every point at the mean of its generating cluster (the optimum k-means should find). A run
    # whose inertia is above it kept two clusters merged (a local optimum); both implementations can.
    labels, _ = assign(points, make_centres(points, args))
    oracle = inertia(points, torch.stack([points[labels == j].mean(0) for j in range(args.clusters)]))
    return {
        "config": {k: v for k, v in vars(args).items() if k != "write"},
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "torch_threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "sklearn": __import__("sklearn").__version__,
                     "python": platform.python_version()},
        "times_s": times,
        "median_s": median,
        "speedup_sklearn_over_ours": median["sklearn"] / median["ours"],
        "inertia_per_point_runs": per_point,
        "inertia_per_point_median": {k: statistics.median(v) for k, v in per_point.items()},
        "inertia_per_point_optimum": oracle / args.points,
        "runs_at_optimum": {k: sum(v <= oracle / args.points * (1 + 1e-4) for v in vals)
                            for k, vals in per_point.items()},
    }


def to_markdown(r: dict[str, Any]) -> str:
    c = r["config"]
    lines = [
        "# Mini-batch k-means: PiCIE (torch) vs scikit-learn",
        "",
        f"{c['points']} points, {c['dim']}-d, K={c['clusters']}, {c['batches']} batches of "
        f"{c['points'] // c['batches']}; ours on {r['device']} ({r['device_name']}), torch threads "
        f"{r['torch_threads']}; median of {c['repeats']} runs (seeds {c['seed'] + 1}-{c['seed'] + c['repeats']}). "
        f"Inertia per point: every point's squared distance to its nearest centroid; the optimum "
        f"{r['inertia_per_point_optimum']:.5f} puts every centroid at the mean of one generating cluster, a run above "
        "it kept two clusters merged.",
        "",
        "| implementation | median s | median inertia / point | runs at the optimum | inertia / point of each run |",
        "|---|---:|---:|---:|---|",
    ]
    for k in ("ours", "sklearn"):
        runs = r["inertia_per_point_runs"][k]
        lines.append(f"| {k} | {r['median_s'][k]:.4f} | {r['inertia_per_point_median'][k]:.5f} | "
                     f"{r['runs_at_optimum'][k]} / {len(runs)} | {', '.join(f'{v:.4f}' for v in runs)} |")
    lines += ["", f"sklearn time / our time: **{r['speedup_sklearn_over_ours']:.2f}x**", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.points < args.batches * args.clusters:
        print("--points must give every batch at least --clusters points", file=sys.stderr)
        return 2
    result = measure(args)
    md = to_markdown(result)
    print(md)
    if args.write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "kmeans_speed.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        (RESULTS / "kmeans_speed.md").write_text(md, encoding="utf-8")
        print(f"wrote {RESULTS / 'kmeans_speed.json'} and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
