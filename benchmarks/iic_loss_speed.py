"""Speed of IIC's displaced joint: vectorised (conv2d, FFT) vs the per-displacement loop, forward + backward.

Times ``training.losses.mutual_info.iic_seg_loss`` (uncollapsed, λ=1, no mask) on random softmax maps for each
joint implementation, median of ``--repeats`` runs after ``--warmup`` runs, all in one process. With
``--write`` the results go to ``benchmarks/results/iic_loss_speed.{json,md}``.

    .venv/bin/python benchmarks/iic_loss_speed.py                      # B=16, K=15, 64x64, T=10
    .venv/bin/python benchmarks/iic_loss_speed.py --batch 4 --size 32 --half-t 5 --repeats 3
    .venv/bin/python benchmarks/iic_loss_speed.py --write --threads 2
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.losses.mutual_info import JOINT_IMPLS, iic_seg_loss  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--clusters", type=int, default=15)
    p.add_argument("--size", type=int, default=64, help="H = W of the probability maps")
    p.add_argument("--half-t", type=int, default=10, help="T: the window is (2T+1)^2 displacements")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--impls", nargs="+", default=list(JOINT_IMPLS), choices=JOINT_IMPLS)
    p.add_argument("--collapsed", action="store_true", help="time the collapsed loss instead")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--write", action="store_true", help="write benchmarks/results/iic_loss_speed.{json,md}")
    return p.parse_args(argv)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_impl(impl: str, p1: torch.Tensor, p2: torch.Tensor, half_t: int, uncollapsed: bool,
              repeats: int, warmup: int) -> dict[str, float]:
    """Seconds of forward+backward per run: median, min and max over ``repeats`` runs."""
    times = []
    loss = torch.tensor(float("nan"))
    for i in range(warmup + repeats):
        a = p1.detach().requires_grad_(True)
        b = p2.detach().requires_grad_(True)
        _sync(p1.device)
        t0 = time.perf_counter()
        loss, _ = iic_seg_loss(a, b, half_T=half_t, uncollapsed=uncollapsed, joint=impl)
        loss.backward()
        _sync(p1.device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "loss": float(loss.detach())}


def markdown(result: dict) -> str:
    c = result["config"]
    lines = [f"IIC displaced-joint loss, forward+backward, B={c['batch']} K={c['clusters']} "
             f"{c['size']}x{c['size']} T={c['half_t']} ({'uncollapsed' if c['uncollapsed'] else 'collapsed'}), "
             f"{c['device']}, {c['threads']} threads, median of {c['repeats']}",
             "", "| joint | median s | min s | max s | x loop |", "|---|---|---|---|---|"]
    loop = result["timings"].get("loop", {}).get("median_s")
    for impl, t in result["timings"].items():
        speedup = f"{loop / t['median_s']:.1f}" if loop else "-"
        lines.append(f"| {impl} | {t['median_s']:.4f} | {t['min_s']:.4f} | {t['max_s']:.4f} | {speedup} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    shape = (args.batch, args.clusters, args.size, args.size)
    p1 = torch.randn(shape, generator=g).softmax(dim=1).to(device)
    p2 = torch.randn(shape, generator=g).softmax(dim=1).to(device)
    timings = {impl: time_impl(impl, p1, p2, args.half_t, not args.collapsed, args.repeats, args.warmup)
               for impl in args.impls}
    result = {"config": {"batch": args.batch, "clusters": args.clusters, "size": args.size, "half_t": args.half_t,
                         "uncollapsed": not args.collapsed, "repeats": args.repeats, "warmup": args.warmup,
                         "device": str(device), "threads": torch.get_num_threads()},
              "env": {"torch": torch.__version__, "python": platform.python_version(),
                      "machine": platform.machine(), "processor": platform.processor()},
              "timings": timings}
    table = markdown(result)
    print(table, end="")
    if args.write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "iic_loss_speed.json").write_text(json.dumps(result, indent=2) + "\n")
        (RESULTS / "iic_loss_speed.md").write_text(table)
        print(f"wrote {RESULTS / 'iic_loss_speed.json'} and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
