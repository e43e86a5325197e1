"""INT8 vs float32 on this CPU through onnxruntime: speed-up at line frame sizes, and what it costs in accuracy.

The float32 model comes from an export folder / ``.onnx`` (``--model``; a dynamic export runs every size), a run
directory (``--run``, exported here with ``--dynamic``), or an untrained registered method (``--method``, speed
only: the accuracy of an untrained net says nothing). Two int8 variants are made with ``export.quantize``
(static QDQ, per-channel weights, calibrated on ``--calibration`` frames): the first and last weighted layers
kept in float (export's default) and every layer quantized.

Speed: ``InferenceSession.run`` of the outputs the Segmenter fetches (labels, clusters) on a uint8 batch of
``--sizes`` (H x W, multiples of the stride), median / p90 of ``--runs`` timed runs after ``--warmup``.
Accuracy: each int8 variant against the float32 model on labelled frames (``--eval-images``/``--eval-masks``,
default the bundled NEU-Seg sample) through ``usseg_sdk.Segmenter``: label agreement and the mIoU drop (one
mapping for both: the model's calibrated one, else Hungarian / many-to-one fitted on the float32 clusters).

    .venv/bin/python benchmarks/int8_speed.py --method infoseg --set width=8 --sizes 64x64 --runs 5   # smoke run
    .venv/bin/python benchmarks/int8_speed.py --run runs/iic_neu --sizes 256x1600 200x200 --runs 20 --write
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from export.frames import SAMPLE_DIR  # noqa: E402
from export.onnx_export import PROBS_NAME  # noqa: E402
from export.pipeline import ExportOptions, export_checkpoint, export_method  # noqa: E402
from export.quantize import Int8Options, quantize_int8  # noqa: E402
from export.verify import Thresholds, fit_frame, load_frames, verify_model, with_probs_output  # noqa: E402
from usseg_sdk.atomic import write_text_atomic  # noqa: E402
from usseg_sdk.config import SegmenterConfig, parse_size  # noqa: E402
from usseg_sdk.segmenter import Segmenter  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
VARIANTS = {"int8 (first/last float)": ("first", "last"), "int8 (all layers)": ()}
NO_THRESHOLDS = Thresholds(max_abs_diff=None, min_agreement=0.0, max_miou_drop=None)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="float32 export folder or .onnx")
    source.add_argument("--run", type=Path, help="run directory or checkpoint (exported here, --dynamic)")
    source.add_argument("--method", help="registered method, untrained (speed only)")
    p.add_argument("--set", action="append", default=[], help="method config key=value (with --method)")
    p.add_argument("--sizes", nargs="+", type=parse_size, default=[(256, 1600), (200, 200)], help="H x W")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: its choice)")
    p.add_argument("--calibration", type=Path, default=SAMPLE_DIR / "images", help="int8 calibration frames")
    p.add_argument("--calibration-count", type=int, default=32)
    p.add_argument("--eval-images", type=Path, default=SAMPLE_DIR / "images")
    p.add_argument("--eval-masks", type=Path, default=SAMPLE_DIR / "masks")
    p.add_argument("--eval-count", type=int, default=40)
    p.add_argument("--write", action="store_true", help="write benchmarks/results/<--name>.{json,md}")
    p.add_argument("--name", default="int8_speed", help="file stem of --write (default int8_speed)")
    return p.parse_args(argv)


# -- the float32 model ------------------------------------------------------------------------------------------
def float_model(args: argparse.Namespace, folder: Path) -> tuple[Path, str]:
    """(path of a float32 .onnx, description of where it came from)."""
    if args.model is not None:
        path = args.model / "model.onnx" if args.model.is_dir() else args.model
        return path, str(args.model)
    options = ExportOptions(out=folder / "fp32", dynamic=True, verify=False)
    if args.run is not None:
        return export_checkpoint(args.run, options).out / "model.onnx", f"run {args.run}"
    from training.methods.base import build_method

    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    method = build_method(args.method, overrides)
    method.prepare_backbones()  # a pretrained trunk's weights (the rest stays untrained)
    return export_method(method, options).out / "model.onnx", f"untrained {args.method} {overrides}"


def quantized_variants(fp32: Path, args: argparse.Namespace, folder: Path) -> dict[str, Path]:
    seg = Segmenter(fp32, config=SegmenterConfig(device="cpu", tiling=False))
    static = _static_hw(seg)
    frames = load_frames(args.calibration, count=args.calibration_count, channels=seg.meta.input.channels)
    batches = [seg.preprocess([fit_frame(f, static).frame]) for f in frames]
    seg.close()
    out = {}
    for name, layers in VARIANTS.items():
        path = folder / f"{'first_last' if layers else 'all'}.onnx"
        quantize_int8(fp32, path, batches, Int8Options(float_layers=layers))
        out[name] = path
    return out


def _static_hw(seg: Segmenter) -> tuple[int, int] | None:
    shape = seg.backend.inputs[0].shape
    return (shape[2], shape[3]) if shape and shape[2] and shape[3] else None


# -- speed ------------------------------------------------------------------------------------------------------
def time_model(path: Path, size: tuple[int, int], args: argparse.Namespace, channels: int) -> dict[str, float]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if args.threads is not None:
        options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).integers(0, 256, (args.batch, channels, *size), dtype=np.uint8)
    for _ in range(args.warmup):
        session.run(["labels", "clusters"], {"image": x})
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        session.run(["labels", "clusters"], {"image": x})
        times.append(time.perf_counter() - start)
    return {"median_ms": 1e3 * statistics.median(times), "p90_ms": 1e3 * float(np.percentile(times, 90)),
            "min_ms": 1e3 * min(times), "runs": len(times)}


def speed_table(models: dict[str, Path], args: argparse.Namespace, channels: int,
                static: tuple[int, int] | None) -> list[dict[str, Any]]:
    rows = []
    sizes = [static] if static is not None else args.sizes
    for size in sizes:
        base = None
        for name, path in models.items():
            timing = time_model(path, size, args, channels)
            base = base or timing["median_ms"]
            rows.append({"variant": name, "size": f"{size[0]}x{size[1]}", "batch": args.batch, **timing,
                         "speedup": base / timing["median_ms"]})
            print(f"{name:<26} {size[0]}x{size[1]}  median {timing['median_ms']:8.2f} ms  "
                  f"speed-up {base / timing['median_ms']:.2f}x", flush=True)
    return rows


# -- accuracy ---------------------------------------------------------------------------------------------------
def accuracy_table(fp32: Path, variants: dict[str, Path], args: argparse.Namespace, folder: Path,
                   channels: int) -> list[dict[str, Any]]:
    """Each int8 variant against the float32 ONNX model (the reference) on the labelled frames."""
    import onnxruntime as ort

    probe = with_probs_output(fp32, folder)  # usseg_probs as an extra output (a Softmax added where left out)
    session = ort.InferenceSession(str(probe), providers=["CPUExecutionProvider"])

    def reference(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run([PROBS_NAME], {"image": x.numpy()})[0])

    frames = load_frames(args.eval_images, args.eval_masks, count=args.eval_count, channels=channels)
    rows = []
    for name, path in variants.items():
        r = verify_model(path, reference, frames, thresholds=NO_THRESHOLDS, raise_on_failure=False)
        rows.append({"variant": name, "frames": r["n_images"], "label_agreement": r["label_agreement"],
                     "miou_fp32": r["miou_reference"], "miou_int8": r["miou_model"], "miou_drop": r["miou_drop"],
                     "mapping": r["miou_mapping"]})
        print(f"{name:<26} agreement {r['label_agreement']:.4f}  mIoU {r['miou_reference']} -> {r['miou_model']}",
              flush=True)
    return rows


# -- report -----------------------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    import onnxruntime as ort

    flags = ""
    cpuinfo = Path("/proc/cpuinfo")
    model_name = platform.processor()
    if cpuinfo.is_file():
        text = cpuinfo.read_text()
        model_name = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")),
                          model_name)
        flags = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return {"cpu": model_name, "cores": os.cpu_count(), "onnxruntime": ort.__version__,
            "vnni": "vnni" in flags, "avx512": "avx512f" in flags, "python": platform.python_version()}


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = ["# INT8 vs float32 on the CPU (onnxruntime)", "",
             f"Model: {result['model']['source']} ({result['model']['method']}, {result['model']['clusters']} "
             f"clusters). CPU: {m['cpu']}, {m['cores']} cores, VNNI {m['vnni']}; onnxruntime {m['onnxruntime']}, "
             f"threads {result['settings']['threads'] or 'default'}. Median of {result['settings']['runs']} runs.",
             "", "| variant | size | median ms | p90 ms | speed-up |", "|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['size']} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | {r['speedup']:.2f}x |"
              for r in result["speed"]]
    if result["accuracy"]:
        lines += ["", "| variant | frames | label agreement | mIoU fp32 | mIoU int8 | drop |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['variant']} | {r['frames']} | {r['label_agreement']:.4f} | {_f(r['miou_fp32'])} | "
                  f"{_f(r['miou_int8'])} | {_f(r['miou_drop'])} |" for r in result["accuracy"]]
    return "\n".join(lines) + "\n"


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="usseg-int8-bench-") as tmp:
        folder = Path(tmp)
        fp32, source = float_model(args, folder)
        meta = Segmenter(fp32, config=SegmenterConfig(device="cpu")).meta
        variants = quantized_variants(fp32, args, folder)
        static = _static_hw(Segmenter(fp32, config=SegmenterConfig(device="cpu")))
        channels = meta.input.channels
        speed = speed_table({"fp32": fp32, **variants}, args, channels, static)
        accuracy = [] if args.method else accuracy_table(fp32, variants, args, folder, channels)
    result = {"model": {"source": source, "method": meta.method, "clusters": meta.n_clusters,
                        "mapping": meta.mapping.kind},
              "machine": machine(), "settings": {"runs": args.runs, "warmup": args.warmup, "threads": args.threads,
                                                 "batch": args.batch, "calibration": str(args.calibration)},
              "speed": speed, "accuracy": accuracy}
    if args.write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        stem = RESULTS / args.name
        write_text_atomic(stem.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
        write_text_atomic(stem.with_suffix(".md"), markdown(result))
        print(f"-> {stem.with_suffix('.json')}, {stem.with_suffix('.md')}")
    else:
        print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
