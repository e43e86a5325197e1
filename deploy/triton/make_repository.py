"""Turn a usseg export directory into a Triton Inference Server model repository.

    python deploy/triton/make_repository.py EXPORT_DIR --out triton_repo [--name usseg_neu]
        [--max-batch-size 8] [--instances 2] [--kind cpu|gpu] [--plan EXPORT_DIR/model.engine]
        [--ort-tensorrt fp16|fp32]

Writes ``<out>/<name>/config.pbtxt``, ``<out>/<name>/1/model.onnx`` (or ``model.plan`` for a TensorRT engine,
``platform: "tensorrt_plan"``) and a copy of ``model.json`` (the usseg metadata: class names, colours, the
input's channels and stride, which the client needs). The config follows Triton's model configuration schema
(``inference.ModelConfig``): the graph's batch axis becomes ``max_batch_size`` with dynamic batching, the
spatial axes stay variable (-1) when the export was ``--dynamic``, and ``instance_group`` sets the number of
model instances per device.

Only the runtime's own dependencies are used (onnxruntime reads the graph's input/output shapes); a TensorRT
plan is described from the ONNX model it was built from, which must lie beside it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from usseg_sdk.meta import ModelMeta

_TRITON_TYPES = {"tensor(uint8)": "TYPE_UINT8", "tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16",
                 "tensor(int64)": "TYPE_INT64", "tensor(int32)": "TYPE_INT32"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    triton_type: str
    dims: tuple[int, ...]  # without the batch axis when the model batches


@dataclass(frozen=True)
class GraphSignature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batched: bool  # the first axis of every tensor is a free batch axis


def read_signature(onnx_path: Path) -> GraphSignature:
    """Input/output names, element types and shapes of an ONNX model, via onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise SystemExit("onnxruntime is needed to read the model: pip install 'usseg-sdk[cpu]'") from e
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    args = list(sess.get_inputs()) + list(sess.get_outputs())
    batched = all(a.shape and not isinstance(a.shape[0], int) for a in args)

    def spec(arg) -> TensorSpec:
        if arg.type not in _TRITON_TYPES:
            raise SystemExit(f"{onnx_path}: tensor {arg.name!r} has type {arg.type}, which this generator does not map")
        dims = [d if isinstance(d, int) else -1 for d in arg.shape]
        return TensorSpec(arg.name, _TRITON_TYPES[arg.type], tuple(dims[1:] if batched else dims))

    return GraphSignature(tuple(spec(a) for a in sess.get_inputs()), tuple(spec(a) for a in sess.get_outputs()),
                          batched)


def render_config(name: str, sig: GraphSignature, *, plan: bool, max_batch_size: int, instances: int,
                  kind: str, ort_tensorrt: str | None = None, queue_delay_us: int = 500) -> str:
    """config.pbtxt text for an ONNX model (onnxruntime backend) or a TensorRT plan."""
    if max_batch_size > 0 and not sig.batched:
        raise SystemExit("the model has a fixed batch axis: export it with --dynamic, or use --max-batch-size 0")
    lines = [f'name: "{name}"',
             'platform: "tensorrt_plan"' if plan else 'backend: "onnxruntime"',
             f"max_batch_size: {max_batch_size if sig.batched else 0}"]
    for section, tensors in (("input", sig.inputs), ("output", sig.outputs)):
        entries = [f'  {{\n    name: "{t.name}"\n    data_type: {t.triton_type}\n'
                   f"    dims: [ {', '.join(str(d) for d in t.dims)} ]\n  }}" for t in tensors]
        lines.append(f"{section} [\n" + ",\n".join(entries) + "\n]")
    if sig.batched and max_batch_size > 1:
        preferred = sorted({b for b in (max_batch_size // 2, max_batch_size) if b >= 1})
        lines.append("dynamic_batching {\n"
                     f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n"
                     f"  max_queue_delay_microseconds: {queue_delay_us}\n}}")
    device_kind = "KIND_GPU" if kind == "gpu" else "KIND_CPU"
    lines.append(f"instance_group [\n  {{\n    count: {instances}\n    kind: {device_kind}\n  }}\n]")
    if ort_tensorrt and not plan:
        lines.append("optimization {\n  execution_accelerators {\n    gpu_execution_accelerator: [ {\n"
                     '      name: "tensorrt"\n'
                     f'      parameters {{ key: "precision_mode" value: "{ort_tensorrt.upper()}" }}\n'
                     '      parameters { key: "max_workspace_size_bytes" value: "1073741824" }\n'
                     '      parameters { key: "trt_engine_cache_enable" value: "1" }\n'
                     "    } ]\n  }\n}")
    return "\n".join(lines) + "\n"


def make_repository(export_dir: Path, out: Path, *, name: str = "usseg", max_batch_size: int = 8,
                    instances: int = 1, kind: str = "cpu", plan: Path | None = None,
                    ort_tensorrt: str | None = None) -> Path:
    """Write the model repository; returns the model's folder."""
    onnx_path = export_dir / "model.onnx"
    meta_path = export_dir / "model.json"
    for p in (onnx_path, meta_path):
        if not p.is_file():
            raise SystemExit(f"{export_dir} is not a usseg export directory: {p.name} is missing")
    if kind not in ("cpu", "gpu"):
        raise SystemExit(f"--kind must be cpu or gpu, got {kind!r}")
    if plan is not None and kind != "gpu":
        raise SystemExit("a TensorRT plan runs on GPU instances only: use --kind gpu")
    ModelMeta.load(meta_path)  # refuse a broken or too-new metadata file before writing anything
    sig = read_signature(onnx_path)
    model_dir = out / name
    version_dir = model_dir / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    if plan is not None:
        shutil.copyfile(plan, version_dir / "model.plan")
    else:
        shutil.copyfile(onnx_path, version_dir / "model.onnx")
    shutil.copyfile(meta_path, model_dir / "model.json")
    (model_dir / "config.pbtxt").write_text(render_config(
        name, sig, plan=plan is not None, max_batch_size=max_batch_size, instances=instances, kind=kind,
        ort_tensorrt=ort_tensorrt))
    return model_dir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("export_dir", type=Path)
    p.add_argument("--out", type=Path, required=True, help="model repository folder (created)")
    p.add_argument("--name", default="usseg", help="model name in the repository")
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--instances", type=int, default=1, help="model instances per device")
    p.add_argument("--kind", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--plan", type=Path, help="serve this TensorRT engine instead of the ONNX model")
    p.add_argument("--ort-tensorrt", choices=("fp16", "fp32"), help="onnxruntime backend: TensorRT accelerator")
    a = p.parse_args(argv)
    folder = make_repository(a.export_dir, a.out, name=a.name, max_batch_size=a.max_batch_size,
                             instances=a.instances, kind=a.kind, plan=a.plan, ort_tensorrt=a.ort_tensorrt)
    print(f"wrote {folder}/config.pbtxt; serve with: tritonserver --model-repository {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
