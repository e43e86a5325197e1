"""``usseg bench --model M``: latency and throughput per device, frame size and batch size (:mod:`usseg_sdk.bench`).

Example (a quick check; real measurements on a quiet machine with more runs):
    usseg bench --model export_dir --sizes 256x1600 --batch-sizes 1,8 --devices cpu --runs 20 --json bench.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from usseg_sdk.atomic import write_text_atomic
from usseg_sdk.bench import run_bench
from usseg_sdk.config import add_runtime_arguments, config_from_args, parse_size


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", required=True, help=".onnx, .engine, or export directory")
    p.add_argument("--sizes", default="256x1600", help="comma-separated frame sizes H x W (default 256x1600)")
    p.add_argument("--batch-sizes", default="1", help="comma-separated batch sizes (default 1)")
    p.add_argument("--devices", default="cpu", help="comma-separated devices: cpu, cuda, tensorrt, auto")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first (TensorRT builds here)")
    p.add_argument("--runs", type=int, default=20, help="timed runs per configuration")
    add_runtime_arguments(p, device=False, batch_size=False)
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--seed", type=int, default=0)


def _int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
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
