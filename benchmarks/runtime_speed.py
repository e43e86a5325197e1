"""Runtime speed on this CPU: usseg SDK end-to-end vs bare onnxruntime vs torch eager, GFLOP/s, resident memory.

For the exported PiCIE (ResNet-18 + FPN) and IIC (Net10a) nets, per precision (fp32, and int8 from the export's
static QDQ path calibrated on the bundled NEU-Seg frames) and per frame size, in ONE process and interleaved run
by run (the order rotates every round), so load drift hits every contender alike:

* ``sdk``: ``Segmenter.predict(frame)`` from a uint8 frame (grey for IIC, BGR for PiCIE) to labels;
* ``bare``: ``InferenceSession.run`` of the same outputs on the already prepared tensor, on the SDK's own
  session (same session options and threads);
* ``torch``: torch eager of the same net: ``method.inference_net()`` (the plain net export starts from, BatchNorm
  NOT folded) in eval mode under ``torch.inference_mode()``, float32, from the same uint8 tensor through the
  graph's ``/255`` to the argmax — the work the exported graph does.

Medians and p90 of ``--runs`` timed runs after ``--warmup``. SDK overhead = (sdk - bare) / bare, interleaved and
alone (sdk against its own session only, what the target is judged on; targets: <= 5 %
at 256x1600; onnxruntime >= 2x faster than torch eager). GFLOP/s: the net's FLOPs from torch's
``FlopCounterMode`` (convolutions and matrix products, 2 FLOPs a multiply-add; resampling, softmax and element-wise
ops not counted) over the bare-onnxruntime median — for int8 the same count, i.e. the float-equivalent rate —
against a float32 ``torch.mm`` of ``--matmul-size``^3 (MKL sgemm) measured before each model x size with the same
threads. Resident memory (psutil RSS) after ``--memory-runs`` SDK predictions, in a separate process that
imports no torch (only the SDK's footprint), of one model (``--memory-model``, default PiCIE, the cheaper one).

Models: untrained (random init, which is fine for speed) at the papers' sizes unless ``--run`` gives a trained run
directory: PiCIE with ResNet-18 width 64, FPN 128-d, K = 27 (COCO-Stuff-27), RGB input (the ImageNet trunk's),
its k-means centroids random unit vectors (an untrained PiCIE has zero centroids, i.e. uniform probabilities);
IIC Net10a at width 1 (4.5 M parameters), grey + Sobel input normalised as for NEU-Seg, K = 4.
``--picie-set`` / ``--iic-set`` change config keys. Export: the real pipeline (``export.pipeline.export_method``,
no verification: random weights have no accuracy to verify), a static graph per frame size (the frame size
rounded up to the stride; what a line with a fixed camera deploys), or one ``--dynamic`` graph per precision.

What this benchmark found and the product now does (see its report): onnxruntime's CPU Softmax over the cluster
axis took 68 % of PiCIE's run at 256x1600, so export decomposes channel softmaxes (``export/channel_softmax.py``),
lets the ArgMax read the logits and leaves the final Softmax out of graphs without scores; PiCIE's classifier
Einsum becomes a 1x1 Conv (``export/einsum_conv.py``); CPU sessions run without onnxruntime's QDQ propagation
(``usseg_sdk/backends/ort.py``). torch runs the net as written (softmax, then argmax).

    .venv/bin/python benchmarks/runtime_speed.py --quick                                   # smoke run, ~1 min
    .venv/bin/python benchmarks/runtime_speed.py --sizes 256x1600 200x200 --runs 20 --write  # quiet machine only
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from usseg_sdk.bench import stats  # noqa: E402
from usseg_sdk.config import SegmenterConfig, parse_size  # noqa: E402
from usseg_sdk.segmenter import Segmenter  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SAMPLE_FRAME = ROOT / "samples" / "neu-seg" / "images" / "000111.jpg"
MODELS = ("picie", "iic")
PRECISIONS = ("fp32", "int8")
# The papers' nets (see the module docstring); --picie-set / --iic-set override keys.
PAPER_CONFIGS: dict[str, dict[str, Any]] = {
    "picie": {"n_clusters": 27, "channels": 3, "backbone_width": 64, "feature_dim": 128},
    "iic": {"n_clusters": 4, "channels": 1, "width": 1.0, "input": {"sobel": "append", "mean": [0.44], "std": [0.20]}},
}
QUICK_CONFIGS: dict[str, dict[str, Any]] = {
    "picie": {"n_clusters": 4, "channels": 3, "backbone_width": 8, "feature_dim": 16},
    "iic": {"n_clusters": 4, "channels": 1, "width": 0.0625,
            "input": {"sobel": "append", "mean": [0.44], "std": [0.20]}},
}
TARGET_OVERHEAD_PCT = 5.0
TARGET_SPEEDUP = 2.0
LOAD_LIMIT_PER_CORE = 0.75  # a 1-minute load average above this per core marks the run as measured under load
MEMORY_GROWTH_TOLERANCE_MB = 8.0  # allocator noise; a leak of one frame-sized array per call is far above it


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--run", type=Path, action="append", default=[],
                   help="trained run directory / checkpoint; replaces the untrained model of its method")
    p.add_argument("--picie-set", action="append", default=[], help="PiCIE config key=value (YAML value)")
    p.add_argument("--iic-set", action="append", default=[], help="IIC config key=value (YAML value)")
    p.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    p.add_argument("--sizes", nargs="+", type=parse_size, default=None, help="frame sizes H x W")
    p.add_argument("--runs", type=int, default=None, help="timed runs per contender (default 20)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs per contender first (default 3)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime and torch threads (default: the cores)")
    p.add_argument("--dynamic", action="store_true", help="one dynamic-shape export per precision, not per size")
    p.add_argument("--int8-count", type=int, default=None, help="int8 calibration frames (default 16)")
    p.add_argument("--exporter", choices=("auto", "dynamo", "torchscript"), default="auto",
                   help="torch -> ONNX exporter (ExportOptions.exporter); torchscript: a fast smoke run")
    p.add_argument("--gap-ms", type=float, default=5.0,
                   help="untimed pause before each timed call, so one runtime's spinning threads are idle before the "
                        "next runtime starts (default 5)")
    p.add_argument("--matmul-size", type=int, default=None, help="n of the n^3 float32 matmul (default 2048)")
    p.add_argument("--memory-model", choices=MODELS, default="picie")
    p.add_argument("--memory-size", type=parse_size, default=None, help="frame of the memory check (256x1600)")
    p.add_argument("--memory-runs", type=int, nargs=2, default=None, metavar=("FIRST", "LAST"),
                   help="RSS after FIRST and after LAST SDK predictions (default 100 2000); 0 0 skips")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny nets and sizes, few runs")
    p.add_argument("--write", action="store_true", help="write runtime_speed.{json,md} into --out")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--memory-worker", type=Path, help=argparse.SUPPRESS)  # internal: the torch-free RSS probe
    args = p.parse_args(argv)
    _fill_defaults(args)
    return args


def _fill_defaults(args: argparse.Namespace) -> None:
    """Defaults of a full run, or of ``--quick``; explicit flags win over both."""
    quick = args.quick
    defaults = {"sizes": [(64, 128), (40, 40)] if quick else [(256, 1600), (200, 200)],
                "runs": 3 if quick else 20, "warmup": 1 if quick else 3, "int8_count": 2 if quick else 16,
                "matmul_size": 256 if quick else 2048, "memory_size": (64, 128) if quick else (256, 1600),
                "memory_runs": [5, 20] if quick else [100, 2000], "threads": _physical_cores()}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.runs < 1 or args.warmup < 0 or args.threads < 1:
        raise SystemExit("--runs and --threads must be >= 1, --warmup >= 0")


def _physical_cores() -> int:
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


# -- models -----------------------------------------------------------------------------------------------------
@dataclass
class Model:
    name: str
    method: Any  # training.methods.base.Method, eval mode
    source: str


def build_models(args: argparse.Namespace) -> list[Model]:
    import torch
    import yaml

    from training.checkpoint import load_method
    from training.methods.base import build_method

    runs = {}
    for path in args.run:
        method, _ = load_method(path, device="cpu")
        runs[method.name] = Model(method.name, method.eval(), f"trained run {path}")
    models = []
    for name in [*args.models, *(m for m in runs if m not in args.models)]:
        if name in runs:
            models.append(runs[name])
            continue
        sets = args.picie_set if name == "picie" else args.iic_set
        config = {**(QUICK_CONFIGS if args.quick else PAPER_CONFIGS)[name],
                  **{k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in sets)}}
        torch.manual_seed(0)
        method = build_method(name, config).eval()
        if name == "picie":
            _random_centroids(method)
        models.append(Model(name, method, f"untrained {name} {config}"))
    return models


def _random_centroids(method: Any) -> None:
    """Unit-norm random inference centroids: an untrained PiCIE's are zeros (every pixel a tie)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, buffer in method.named_buffers():
            if name in ("centroids", "centroids_over"):
                buffer.copy_(torch.nn.functional.normalize(torch.randn(buffer.shape, generator=generator), dim=1))


def export_model(model: Model, precision: str, size: tuple[int, int] | None, args: argparse.Namespace,
                 folder: Path) -> Path:
    """Export through the real pipeline; ``size`` None = dynamic shapes. Returns the export folder."""
    from export.pipeline import ExportOptions, export_method

    tag = "dynamic" if size is None else f"{size[0]}x{size[1]}"
    options = ExportOptions(out=folder / f"{model.name}-{precision}-{tag}", precision=precision, dynamic=size is None,
                            input_size=size, verify=False, int8_count=args.int8_count, exporter=args.exporter)
    start = time.perf_counter()
    out = export_method(model.method, options).out
    print(f"exported {model.name} {precision} {tag} in {time.perf_counter() - start:.1f} s", flush=True)
    return out


def graph_size(model: Model, size: tuple[int, int]) -> tuple[int, int]:
    """The static graph input for frames of ``size``: rounded up to the stride and ``min_size``."""
    from usseg_sdk.preprocess import padded_size

    return padded_size(*size, model.method.input_spec())


def sample_frame(model: Model, size: tuple[int, int]) -> np.ndarray:
    """A real NEU-Seg frame resized to ``size``: grey (H, W) for 1-channel models, BGR (H, W, 3) otherwise."""
    import cv2

    grey = cv2.resize(cv2.imread(str(SAMPLE_FRAME), cv2.IMREAD_GRAYSCALE), (size[1], size[0]))
    return grey if model.method.input_spec().channels == 1 else np.ascontiguousarray(np.dstack([grey] * 3))


# -- the contenders ---------------------------------------------------------------------------------------------
def sdk_contenders(seg: Segmenter, frame: np.ndarray, precision: str) -> dict[str, Callable[[], Any]]:
    """``sdk <precision>``: predict on the frame; ``bare <precision>``: the SDK's session on the prepared input."""
    feeds, fetch = {seg.input_name: seg.preprocess([frame])}, seg.output_names
    session = seg.backend.session
    return {f"sdk {precision}": lambda: seg.predict(frame), f"bare {precision}": lambda: session.run(fetch, feeds)}


def torch_contender(net: Any, image: np.ndarray) -> Callable[[], Any]:
    """The inference net from the same uint8 (B, C, H, W) tensor: /255 -> net -> argmax, as the graph does."""
    import torch

    x = torch.from_numpy(image)

    def run() -> Any:
        with torch.inference_mode():
            return net(x.to(torch.float32) / 255.0).argmax(dim=1).to(torch.uint8)  # (B, H, W)
    return run


def interleaved(contenders: dict[str, Callable[[], Any]], warmup: int, runs: int,
                gap_s: float = 0.0, groups: dict[str, str] | None = None) -> dict[str, list[float]]:
    """Seconds per call of each contender: warm-up, then ``runs`` rounds of one call each, the order rotated
    every round so that no contender always follows the same one.

    ``groups`` (contender -> group, e.g. its onnxruntime session): when a contender follows one of another group,
    one untimed call of it comes first. Without it the first call after a switch pays for the previous runtime's
    cold caches and still-spinning threads; in the rotation ``sdk X`` always came right after another session or
    torch and ``bare X`` right after ``sdk X``, which charged that switch to the SDK (int8: +90-120 % "overhead"
    that a frame-after-frame loop on one model does not have)."""
    names = list(contenders)
    for name in names:
        for _ in range(warmup):
            contenders[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    previous: str | None = None
    for r in range(runs):
        for name in names[r % len(names):] + names[:r % len(names)]:
            if groups is not None and previous is not None and groups[name] != groups[previous]:
                contenders[name]()  # re-warm after a switch of runtime (untimed)
            previous = name
            if gap_s:
                time.sleep(gap_s)
            start = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - start)
    return times


def count_flops(net: Any, image: np.ndarray) -> int:
    """FLOPs of one forward of ``net`` on the uint8 ``image`` (torch's FlopCounterMode: conv / matmul ops)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        net(torch.from_numpy(image).to(torch.float32) / 255.0)
    return int(counter.get_total_flops())


def matmul_gflops(n: int, repeats: int = 5) -> float:
    """GFLOP/s of a float32 (n, n) @ (n, n) torch.mm at torch's current threads (median of ``repeats``)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=generator), torch.randn(n, n, generator=generator)
    times = interleaved({"mm": lambda: torch.mm(a, b)}, warmup=2, runs=repeats)["mm"]
    return 2.0 * n ** 3 / statistics.median(times) / 1e9


# -- one model x size ------------------------------------------------------------------------------------------
def bench_size(model: Model, size: tuple[int, int], exports: dict[str, Path], args: argparse.Namespace
               ) -> list[dict[str, Any]]:
    """Every precision of one model at one frame size, interleaved with torch; one row per precision."""
    frame = sample_frame(model, size)
    config = SegmenterConfig(device="cpu", tiling=False, intra_op_threads=args.threads)
    segs = {p: Segmenter(path, config=config) for p, path in exports.items()}
    contenders: dict[str, Callable[[], Any]] = {}
    for precision, seg in segs.items():
        contenders.update(sdk_contenders(seg, frame, precision))
    image = next(iter(segs.values())).preprocess([frame])  # (1, C, H, W) uint8, the graph input
    net = model.method.inference_net().eval()
    flops = count_flops(net, image)
    contenders["torch fp32"] = torch_contender(net, image)
    matmul = matmul_gflops(args.matmul_size)
    groups = {name: name.split()[-1] if name.startswith(("sdk ", "bare ")) else "torch" for name in contenders}
    times = interleaved(contenders, args.warmup, args.runs, args.gap_ms / 1e3, groups)
    # The SDK's own cost: its predict against its session, alternating with nothing else in between (a line calls
    # one model frame after frame). Beside the other session and torch the int8 rows' difference grew (several ms
    # for the SDK call only) by an effect of switching runtimes that this separates out.
    alone = {p: interleaved({f"sdk {p}": contenders[f"sdk {p}"], f"bare {p}": contenders[f"bare {p}"]},
                            args.warmup, args.runs, args.gap_ms / 1e3) for p in segs}
    ort_settings = _session_settings(next(iter(segs.values())))
    for seg in segs.values():
        seg.close()
    torch_stats = stats(times["torch fp32"], 1)
    rows = []
    for precision in segs:
        sdk, bare = stats(times[f"sdk {precision}"], 1), stats(times[f"bare {precision}"], 1)
        rows.append({"model": model.name, "precision": precision, "size": list(size), "graph_size": list(image.shape),
                     "sdk": sdk, "bare_ort": bare, "torch": torch_stats,
                     "overhead_pct": 100.0 * (sdk["p50_ms"] - bare["p50_ms"]) / bare["p50_ms"],
                     "alone": {"sdk": (sdk_alone := stats(alone[precision][f"sdk {precision}"], 1)),
                               "bare_ort": (bare_alone := stats(alone[precision][f"bare {precision}"], 1)),
                               "overhead_pct": 100.0 * (sdk_alone["p50_ms"] - bare_alone["p50_ms"])
                               / bare_alone["p50_ms"]},
                     "speedup_ort_vs_torch": torch_stats["p50_ms"] / bare["p50_ms"],
                     "gflop": flops / 1e9, "gflops": flops / 1e6 / bare["p50_ms"],
                     "torch_gflops": flops / 1e6 / torch_stats["p50_ms"], "matmul_gflops": matmul,
                     "ort_session": ort_settings})
        print(_row_line(rows[-1]), flush=True)
    return rows


def _session_settings(seg: Segmenter) -> dict[str, Any]:
    options = seg.backend.session.get_session_options()
    return {"intra_op_threads": options.intra_op_num_threads, "inter_op_threads": options.inter_op_num_threads,
            "graph_optimization_level": str(options.graph_optimization_level).rsplit(".", 1)[-1],
            "execution_mode": str(options.execution_mode).rsplit(".", 1)[-1],
            "providers": seg.backend.session.get_providers(),
            "disabled_optimizers": seg.backend.describe().get("disabled_optimizers", [])}


def _row_line(r: dict[str, Any]) -> str:
    return (f"{r['model']:<6} {r['precision']:<5} {r['size'][0]}x{r['size'][1]:<5} sdk {r['sdk']['p50_ms']:9.2f} ms  "
            f"bare {r['bare_ort']['p50_ms']:9.2f} ms  torch {r['torch']['p50_ms']:9.2f} ms  "
            f"overhead {r['overhead_pct']:+6.2f} % (alone {r['alone']['overhead_pct']:+6.2f} %)  "
            f"ort/torch {r['speedup_ort_vs_torch']:5.2f}x  "
            f"{r['gflops']:7.1f} GFLOP/s (matmul {r['matmul_gflops']:.0f})")


# -- resident memory (a torch-free child process) ---------------------------------------------------------------
def memory_check(export_dir: Path, model: Model, args: argparse.Namespace) -> dict[str, Any]:
    """RSS of a process that imports only the SDK, after each of ``--memory-runs`` predictions."""
    first, last = args.memory_runs
    frame = sample_frame(model, args.memory_size)
    with tempfile.TemporaryDirectory(prefix="usseg-rss-") as tmp:
        frame_path = Path(tmp) / "frame.npy"
        np.save(frame_path, frame)
        command = [sys.executable, __file__, "--memory-worker", str(export_dir), "--memory-runs", str(first),
                   str(last), "--threads", str(args.threads)]
        env = {**os.environ, "USSEG_RSS_FRAME": str(frame_path)}
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory worker failed ({done.returncode}): {done.stderr[-2000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    growth = report["rss_mb"][str(last)] - report["rss_mb"][str(first)]
    report.update(model=model.name, export=export_dir.name, growth_mb=growth,
                  grows=growth > MEMORY_GROWTH_TOLERANCE_MB, tolerance_mb=MEMORY_GROWTH_TOLERANCE_MB)
    print(f"memory: {model.name} RSS {report['rss_mb'][str(first)]:.1f} MB after {first} predictions, "
          f"{report['rss_mb'][str(last)]:.1f} MB after {last} ({growth:+.1f} MB)", flush=True)
    return report


def memory_worker(args: argparse.Namespace) -> int:
    """The child of :func:`memory_check`: prints one JSON line (RSS in MB after 0, FIRST and LAST predictions)."""
    import psutil

    process = psutil.Process()
    frame = np.load(os.environ["USSEG_RSS_FRAME"])
    seg = Segmenter(args.memory_worker, config=SegmenterConfig(device="cpu", tiling=False,
                                                                intra_op_threads=args.threads))
    rss = {"loaded": process.memory_info().rss / 2**20}
    first, last = args.memory_runs
    start = time.perf_counter()
    for i in range(1, last + 1):
        seg.predict(frame)
        if i in (1, first, last):
            rss[str(i)] = process.memory_info().rss / 2**20
    seconds = time.perf_counter() - start
    print(json.dumps({"rss_mb": rss, "predictions": last, "seconds": seconds, "torch_imported": "torch" in sys.modules,
                      "frame": list(frame.shape)}))
    return 0


# -- report -----------------------------------------------------------------------------------------------------
def machine(threads: int) -> dict[str, Any]:
    import torch

    from benchmarks.int8_speed import machine as cpu_machine

    info = cpu_machine()
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    return {**info, "physical_cores": _physical_cores(), "threads": threads, "torch": torch.__version__,
            "amx": "amx_int8" in flags, "numpy": np.__version__}


def markdown(result: dict[str, Any]) -> str:
    lines = _header_md(result)
    for model in result["models"]:
        lines += [f"## {model['name']} ({model['parameters'] / 1e6:.2f} M parameters, K = {model['clusters']}, "
                  f"{model['input']})", "", f"Source: {model['source']}.", "",
                  "| precision | frame | graph | SDK ms | bare ORT ms | torch ms | SDK p90 | bare p90 | overhead % | "
                  "alone: SDK ms | alone: bare ms | alone: overhead % | "
                  "ort/torch | GFLOP | GFLOP/s | torch GFLOP/s | matmul GFLOP/s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        lines += [_row_md(r) for r in result["rows"] if r["model"] == model["name"]]
        lines.append("")
    lines += _memory_md(result.get("memory")) + _targets_md(result["targets"])
    return "\n".join(lines) + "\n"


def _header_md(result: dict[str, Any]) -> list[str]:
    m, s = result["machine"], result["settings"]
    lines = ["# Runtime speed on the CPU: usseg SDK vs bare onnxruntime vs torch eager", "",
             f"CPU: {m['cpu']}, {m['physical_cores']} cores ({m['cores']} logical), AVX-512 {m['avx512']}, VNNI "
             f"{m['vnni']}, AMX {m['amx']}. onnxruntime {m['onnxruntime']}, torch {m['torch']}, {s['threads']} "
             f"threads each. Load average (1/5/15 min) at start {_load(result['load_start'])}, at end "
             f"{_load(result['load_end'])}. Median (p50) of {s['runs']} interleaved runs after {s['warmup']} warm-up, "
             f"{s['gap_ms']:g} ms pause before each; graphs {'dynamic' if s['dynamic'] else 'static per size'}; "
             "batch 1.", ""]
    if result["loaded"]:
        lines += [f"**Measured under load** (1-minute load average above {LOAD_LIMIT_PER_CORE} per core at the start; "
                  "the end's includes this benchmark's own threads): other processes shared the cores; these "
                  "numbers are not representative.", ""]
    lines += ["Overhead = (SDK - bare) / bare, measured twice: interleaved with the other precision's session and "
              "torch (each call after a switch of runtime preceded by one untimed call), and alone (the SDK's "
              "predict alternating with its own session's bare run, nothing in between: a line's case, and what "
              "the target is judged on). ort/torch = torch eager median / bare onnxruntime median (torch: the "
              "un-folded inference net, fp32, /255 to argmax). GFLOP/s = the net's conv/matmul FLOPs (torch "
              "FlopCounterMode) / median (int8: float-equivalent rate); matmul = float32 torch.mm of "
              f"{s['matmul_size']}^3 measured in the same run before each model x size.", "",
              "The exported graphs skip what labels do not need (no final softmax where the ArgMax can read the "
              "logits) and PiCIE's classifier runs as a 1x1 Conv; torch runs the net as written (softmax, then "
              "argmax). onnxruntime: the SDK's session options (graph optimisation ALL, QDQ propagation off on the "
              "CPU).", ""]
    return lines


def _row_md(r: dict[str, Any]) -> str:
    g = r["graph_size"]
    return (f"| {r['precision']} | {r['size'][0]}x{r['size'][1]} | {g[2]}x{g[3]} | {r['sdk']['p50_ms']:.2f} | "
            f"{r['bare_ort']['p50_ms']:.2f} | {r['torch']['p50_ms']:.2f} | {r['sdk']['p90_ms']:.2f} | "
            f"{r['bare_ort']['p90_ms']:.2f} | {r['overhead_pct']:+.2f} | {r['alone']['sdk']['p50_ms']:.2f} | "
            f"{r['alone']['bare_ort']['p50_ms']:.2f} | {r['alone']['overhead_pct']:+.2f} | "
            f"{r['speedup_ort_vs_torch']:.2f}x | "
            f"{r['gflop']:.1f} | {r['gflops']:.1f} | {r['torch_gflops']:.1f} | {r['matmul_gflops']:.1f} |")


def _memory_md(mem: dict[str, Any] | None) -> list[str]:
    if not mem:
        return []
    first, last = mem["checkpoints"]
    rss = mem["rss_mb"]
    return ["## Resident memory", "",
            f"{mem['model']} ({mem['export']}), SDK predictions of a {mem['frame'][0]}x{mem['frame'][1]} frame in a "
            f"process without torch (torch imported: {mem['torch_imported']}): RSS {rss['loaded']:.1f} MB after "
            f"loading, {rss[str(first)]:.1f} MB after {first}, {rss[str(last)]:.1f} MB after {last} predictions: "
            f"growth {mem['growth_mb']:+.1f} MB ({'GROWS' if mem['grows'] else 'stable'}; tolerance "
            f"{mem['tolerance_mb']:.0f} MB). {last} predictions took {mem['seconds']:.0f} s.", ""]


def _targets_md(t: dict[str, Any]) -> list[str]:
    return ["## Targets", "",
            f"- SDK overhead <= {TARGET_OVERHEAD_PCT:.0f} % at 256x1600: {_verdict(t['overhead'])}",
            f"- onnxruntime >= {TARGET_SPEEDUP:.0f}x faster than torch eager: {_verdict(t['speedup'])}", ""]


def _verdict(items: list[dict[str, Any]]) -> str:
    if not items:
        return "not measured"
    return "; ".join(f"{i['row']} {i['value']:.2f} ({'met' if i['met'] else 'MISSED'})" for i in items)


def _load(values: list[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def name(r: dict[str, Any]) -> str:
        return f"{r['model']} {r['precision']} {r['size'][0]}x{r['size'][1]}"

    # judged on the SDK against its own session alone (its cost on a line); the interleaved figure is reported too
    overhead = [{"row": name(r), "value": r["alone"]["overhead_pct"], "interleaved": r["overhead_pct"],
                 "met": r["alone"]["overhead_pct"] <= TARGET_OVERHEAD_PCT}
                for r in rows if tuple(r["size"]) == (256, 1600)]
    speedup = [{"row": name(r), "value": r["speedup_ort_vs_torch"], "met": r["speedup_ort_vs_torch"] >= TARGET_SPEEDUP}
               for r in rows]
    return {"overhead_max_pct": TARGET_OVERHEAD_PCT, "speedup_min": TARGET_SPEEDUP, "overhead": overhead,
            "speedup": speedup}


# -- main -------------------------------------------------------------------------------------------------------
def describe(model: Model) -> dict[str, Any]:
    spec = model.method.input_spec()
    sobel = " + Sobel" if spec.sobel else ""
    return {"name": model.name, "source": model.source, "clusters": model.method.eval_heads()["main"],
            "parameters": sum(p.numel() for p in model.method.inference_net().parameters()),
            "input": f"{spec.color_order}{sobel}, {spec.channels} channel(s)"}


def bench_model(model: Model, args: argparse.Namespace, folder: Path) -> tuple[list[dict[str, Any]], Path]:
    """Rows of every size of one model, and the fp32 export of ``--memory-size`` (for the memory check)."""
    rows = []
    dynamic = {p: export_model(model, p, None, args, folder) for p in args.precisions} if args.dynamic else None
    for size in args.sizes:
        exports = dynamic or {p: export_model(model, p, graph_size(model, size), args, folder)
                              for p in args.precisions}
        rows += bench_size(model, size, exports, args)
    memory_export = folder / f"{model.name}-fp32-{_tag(graph_size(model, args.memory_size))}"
    return rows, (dynamic or {}).get("fp32") or memory_export


def _tag(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.memory_worker is not None:
        return memory_worker(args)
    import torch

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    load_start = list(os.getloadavg())
    models = build_models(args)
    rows: list[dict[str, Any]] = []
    memory = None
    with tempfile.TemporaryDirectory(prefix="usseg-runtime-speed-") as tmp:
        for model in models:
            model_rows, memory_export = bench_model(model, args, Path(tmp))
            rows += model_rows
            if model.name == args.memory_model and args.memory_runs[1] > 0:
                if not memory_export.exists():
                    memory_export = export_model(model, "fp32", graph_size(model, args.memory_size), args, Path(tmp))
                memory = {**memory_check(memory_export, model, args), "checkpoints": list(args.memory_runs)}
    load_end = list(os.getloadavg())
    result = {"settings": {k: _jsonable(v) for k, v in vars(args).items() if k != "memory_worker"},
              "machine": machine(args.threads), "load_start": load_start, "load_end": load_end,
              "loaded": load_start[0] > LOAD_LIMIT_PER_CORE * _physical_cores(),  # the end includes our own load
              "models": [describe(m) for m in models], "rows": rows, "memory": memory, "targets": targets(rows)}
    text = markdown(result)
    if args.write:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "runtime_speed.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "runtime_speed.md").write_text(text)
        print(f"-> {args.out / 'runtime_speed.json'}, {args.out / 'runtime_speed.md'}")
    else:
        print(text)
    return 0


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
