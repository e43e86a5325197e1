"""``usseg doctor [--json]``: what this machine can run (:func:`usseg_sdk.doctor.collect`)."""

from __future__ import annotations

import argparse
import json

from usseg_sdk.doctor import collect


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    report = collect()
    if args.json:
        print(json.dumps(report, indent=2))
        return 1 if report["problems"] else 0
    print(f"usseg-sdk {report['usseg_sdk']}  python {report['python']}  {report['platform']}")
    print("packages   " + "  ".join(f"{k} {v}" for k, v in report["packages"].items() if v))
    ort = report["onnxruntime"]
    print(f"onnxruntime {ort.get('version', '-')}  ({', '.join(report['onnxruntime_distributions']) or 'none'})")
    print(f"providers  {', '.join(ort.get('providers', [])) or '-'}")
    cuda = report["cuda"]
    print(f"GPUs       {'; '.join(cuda.get('gpus', [])) or 'none'}  CUDA runtime {cuda.get('cuda_runtime', '-')}")
    trt = report["tensorrt"]
    print(f"TensorRT   {trt.get('version', 'not installed')}")
    print("commands   " + "  ".join(f"{name} {'ok' if c['ok'] else 'FAILS'}" for name, c in report["commands"].items()))
    for note in report["notes"]:
        print(f"note: {note}")
    for problem in report["problems"]:
        print(f"PROBLEM: {problem}")
    if not report["problems"]:
        print("ok")
    return 1 if report["problems"] else 0
