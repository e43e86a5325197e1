"""``usseg bench``: latency percentiles and throughput per device, frame size and batch size.

Three timings per configuration, on the same random frames:

* ``end_to_end``: ``Segmenter.predict`` / ``predict_batch`` — validation, colour conversion, padding, tiling,
  backend, stitching, label mapping: what a line sees.
* ``backend_only``: the backend's ``run`` on the already-built input (untiled frames only).
* ``bare_onnxruntime``: ``InferenceSession.run`` on that input with the same outputs — the floor the SDK's
  overhead is measured against (``overhead_pct`` = end_to_end p50 over bare p50, minus 100).

Example (a quick check; real measurements on a quiet machine with more runs):
    usseg bench --model export_dir --sizes 256x1600 --batch-sizes 1,8 --devices cpu --runs 20 --json bench.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from usseg_sdk.atomic import write_text_atomic
from usseg_sdk.config import SegmenterConfig, parse_size
from usseg_sdk.errors import BackendUnavailableError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", required=True, help=".onnx, .engine, or export directory")
    p.add_argument("--sizes", default="256x1600", help="comma-separated frame sizes H x W (default 256x1600)")
    p.add_argument("--batch-sizes", default="1", help="comma-separated batch sizes (default 1)")
    p.add_argument("--devices", default="cpu", help="comma-separated devices: cpu, cuda, tensorrt, auto")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first (TensorRT builds here)")
    p.add_argument("--runs", type=int, default=20, help="timed runs per configuration")
    p.add_argument("--threads", type=int, help="onnxruntime intra-op threads")
    p.add_argument("--tile-size", type=parse_size, help="tile H x W (default: the model's)")
    p.add_argument("--overlap", type=int)
    p.add_argument("--no-tiling", action="store_true")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--seed", type=int, default=0)


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
    from usseg_sdk.segmenter import Segmenter

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


def _int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def run(args: argparse.Namespace) -> int:
    fields: dict[str, Any] = {"intra_op_threads": args.threads, "tile_size": args.tile_size, "overlap": args.overlap}
    config = SegmenterConfig.from_env(**{k: v for k, v in fields.items() if v is not None},
                                      **({"tiling": False} if args.no_tiling else {}))
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    report = run_bench(args.model, [d.strip() for d in args.devices.split(",") if d.strip()], sizes,
                       _int_list(args.batch_sizes), args.warmup, args.runs, config, args.seed)
    for r in report["results"]:
        if "error" in r:
            print(f"{r['device']:<9} unavailable: {r['error']}")
            continue
        e2e = r["end_to_end"]
        line = (f"{r['device']:<9} {r['size'][0]}x{r['size'][1]:<6} batch {r['batch_size']:<3} end-to-end p50 "
                f"{e2e['p50_ms']:8.2f} p90 {e2e['p90_ms']:8.2f} p99 {e2e['p99_ms']:8.2f} ms  {e2e['fps']:8.1f} fps")
        if "backend_only" in r:
            line += f"  | backend p50 {r['backend_only']['p50_ms']:8.2f} ms"
        if r.get("overhead_pct") is not None:
            line += f"  overhead {r['overhead_pct']:+.1f}%"
        print(line)
    if args.json:
        write_text_atomic(args.json, json.dumps(report, indent=2) + "\n")
        print(f"-> {args.json}")
    return 0 if any("error" not in r for r in report["results"]) else 2
