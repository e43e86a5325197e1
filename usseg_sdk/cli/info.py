"""``usseg info MODEL [--json]``: a model's metadata, classes, inputs and outputs."""

from __future__ import annotations

import argparse
import json
from typing import Any

from usseg_sdk.config import SegmenterConfig
from usseg_sdk.segmenter import Segmenter


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help=".onnx, .engine, or export directory")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "tensorrt"])
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    seg = Segmenter(args.model, config=SegmenterConfig.from_env(device=args.device))
    backend = seg.backend
    info = {"model": str(backend.path), "backend": backend.describe(),
            "inputs": [_tensor(t) for t in backend.inputs], "outputs": [_tensor(t) for t in backend.outputs],
            "meta_source": seg.meta_source.to_dict(), "meta": seg.meta.model_dump(mode="json")}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    meta = seg.meta
    print(f"model      {info['model']}  ({backend.name}, {', '.join(info['backend'].get('providers', []))})")
    print(f"metadata   {seg.meta_source.describe()}")
    print(f"method     {meta.method}  schema v{meta.schema_version}  precision {meta.precision}  "
          f"exporter {meta.exporter or '-'}  opset {meta.opset or '-'}")
    spec = meta.input
    print(f"input      {spec.channels} ch {spec.color_order}  {spec.dtype} {spec.layout}  stride {spec.stride}  "
          f"min {spec.min_size}  native {spec.native_size}  resize {spec.resize_to_native}")
    print(f"tiling     tile {meta.tiling.tile_size}  overlap {meta.tiling.overlap}  max pixels "
          f"{meta.tiling.max_pixels or 'runtime default'}  (this runtime: {seg.info()['max_pixels']})")
    print(f"clusters   {meta.n_clusters} -> {meta.n_classes} classes  mapping {meta.mapping.kind} "
          f"{meta.cluster_to_class}  (fitted on {meta.mapping.n_images} images)")
    for i, c in enumerate(meta.classes):
        print(f"  class {i:<3} {c.name:<20} rgb{c.color}  {'defect' if c.defect else 'background'}")
    if meta.mapping.metrics:
        print("calibration " + "  ".join(f"{k} {v:.4f}" for k, v in meta.mapping.metrics.items()))
    for kind in ("inputs", "outputs"):
        for t in info[kind]:
            print(f"{kind[:-1]:<10} {t['name']:<10} {t['dtype']}  {t['shape']}")
    if meta.training.dataset or meta.training.steps:
        print(f"training   {meta.training.model_dump(exclude={'config'})}")
    return 0


def _tensor(t: Any) -> dict[str, Any]:
    return {"name": t.name, "dtype": None if t.dtype is None else str(t.dtype),
            "shape": None if t.shape is None else ["?" if d is None else d for d in t.shape]}
