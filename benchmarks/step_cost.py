"""CPU-seconds per optimiser step of NEU-Seg presets, one torch thread: how ``benchmarks/accuracy/rows.py`` sizes a
row's step budget (600 s over this figure) when no quiet machine is at hand.

    .venv/bin/python benchmarks/step_cost.py iic_neu picie_neu infoseg_neu ac_neu

Process CPU time, not wall time, so other processes on the machine inflate it less (they still do, through shared
caches and hyper-threads: a quiet machine is faster than this figure says). Trains on the bundled sample's train
split with each preset's crop and batch; the first two steps are not counted. Epoch-start work (PiCIE's k-means
passes) is not included.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.config import load_preset
from training.data import build_dataset
from training.methods.base import FitContext, build_method

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "neu-seg"


def step_cost(preset: str, steps: int = 10) -> float:
    """Median CPU-seconds of one training step (forward, backward, optimiser) of ``preset``."""
    config = load_preset(preset)
    method = build_method(config["method"], config["method_config"])
    spec = {k: v for k, v in {**config["data"]["train"], "root": str(SAMPLE), "split_file": None,
                              "split": "train", "kind": "mask_folder"}.items() if v is not None}
    loader = DataLoader(build_dataset(spec, train=True), batch_size=config["train"]["batch_size"], shuffle=True,
                        drop_last=True)
    ctx = FitContext(device=torch.device("cpu"), train_loader=loader, epochs=1000, steps_per_epoch=len(loader),
                     total_steps=1000)
    method.on_fit_start(ctx)
    method.train()
    method.on_epoch_start(ctx)
    optimiser = method.configure_optimizer()
    costs, batches = [], iter(loader)
    for _ in range(steps + 2):
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        start = time.process_time()
        loss = method.training_step(batch, ctx)["loss"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        costs.append(time.process_time() - start)
    return statistics.median(costs[2:])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("presets", nargs="+")
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(1)
    for preset in args.presets:
        cost = step_cost(preset, args.steps)
        print(f"{preset}: {cost:.3f} CPU-s a step, {600 / cost:.0f} steps in 600 s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
