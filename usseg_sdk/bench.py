"""Latency percentiles and throughput per device, frame size and batch size.

Three timings per configuration, on the same random frames:

* ``end_to_end``: ``Segmenter.predict`` / ``predict_batch`` — validation, colour conversion, padding, tiling,
  backend, stitching, label mapping: what a line sees.
* ``backend_only``: the backend's ``run`` on the already-built input (untiled frames only).
* ``bare_onnxruntime``: ``InferenceSession.run`` on that input with the same outputs — the floor the SDK's
  overhead is measured against (``overhead_pct`` = end_to_end p50 over bare p50, minus 100).

The command is ``usseg bench`` (:mod:`usseg_sdk.cli.bench`).

Example:
    >>> report = run_bench("export_dir", ["cpu"], [(256, 1600)], [1, 8], 3, 20, SegmenterConfig())  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from usseg_sdk.config import SegmenterConfig
from usseg_sdk.errors import BackendUnavailableError
from usseg_sdk.segmenter import Segmenter


def stats(seconds: list[float], frames_per_run: int) -> dict[str, float]:
    """p50/p90/p99/mean latency in ms, and frames per second at the mean latency."""
    ms = np.asarray(seconds) * 1000.0
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    mean = float(ms.mean())
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "mean_ms": mean,
            "fps": frames_per_run * 1000.0 / mean if mean > 0 else float("inf"), "runs": len(seconds)}


def time_it(fn: Callable[[], Any], warmup: int, runs: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def bench_config(seg: Any, size: tuple[int, int], batch: int, warmup: int, runs: int,
                 rng: np.random.Generator) -> dict[str, Any]:
    channels = seg.meta.input.channels
    shape = size if channels == 1 else (*size, 3 if channels == 3 else 4)
    frames = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(batch)]
    e2e = (lambda: seg.predict(frames[0])) if batch == 1 else (lambda: seg.predict_batch(frames))
    row: dict[str, Any] = {"size": list(size), "batch_size": batch,
                           "end_to_end": stats(time_it(e2e, warmup, runs), batch)}
    try:
        x = seg.preprocess(frames)
    except ValueError:
        row["note"] = "tiled: backend-only timings need untiled frames"
        return row
    feeds, fetch = {seg.input_name: x}, seg.output_names
    row["backend_only"] = stats(time_it(lambda: seg.backend.run(feeds, fetch), warmup, runs), batch)
    session = getattr(seg.backend, "session", None)
    if session is not None:
        row["bare_onnxruntime"] = stats(time_it(lambda: session.run(fetch, feeds), warmup, runs), batch)
        bare = row["bare_onnxruntime"]["p50_ms"]
        row["overhead_pct"] = 100.0 * (row["end_to_end"]["p50_ms"] / bare - 1.0) if bare > 0 else None
    return row


def run_bench(model: str, devices: list[str], sizes: list[tuple[int, int]], batches: list[int], warmup: int,
              runs: int, config: SegmenterConfig, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    results: list[dict[str, Any]] = []
    for device in devices:
        try:
            seg = Segmenter(model, config=config.replace(device=device, batch_size=max(batches)))
        except BackendUnavailableError as e:
            results.append({"device": device, "error": str(e)})
            continue
        described = seg.backend.describe()
        for size in sizes:
            for batch in batches:
                row = bench_config(seg, size, batch, warmup, runs, rng)
                results.append({"device": device, "backend": described, **row})
    return {"model": str(model), "warmup": warmup, "runs": runs, "results": results}
