"""INT8 for CPU lines (``--precision int8``): static QDQ quantization with onnxruntime's quantization tools.

``onnxruntime.quantization.quantize_static`` in QDQ format with per-channel int8 weights, its activation
ranges calibrated on the user's frames (``--int8-frames DIR``, else the run's training folder: see
:mod:`export.frames`) fed exactly as the runtime feeds them (``Segmenter.preprocess`` on the float32 model: channel
conversion, stride padding, and a frame's first tile where the runtime tiles it).

What stays in float (see :func:`float_nodes`):

* the contract tail (ArgMax, the cluster-to-class Gather, the scores Einsum): its initializers must stay what
  ``usseg calibrate`` rewrites;
* everything after the last weighted layer (upsampling, Softmax): probabilities quantized to 8 bits collapse
  near-equal clusters into ties and the argmax then picks by index, which costs far more than it saves;
* products of two activations (attention's ``QK^T`` and ``AV`` MatMuls), normalisations and softmaxes;
* optionally (``--int8-float-layers first,last``, the default) the first and the last weighted layer, whose
  quantization error is the one not averaged out by later layers (the usual mixed-precision recipe; the
  benchmark ``benchmarks/int8_speed.py`` measures both choices).

Activations are uint8 (the x86 U8S8 fast path of onnxruntime's CPU kernels); ``target="tensorrt"`` makes them
symmetric int8 instead, the only activation quantization TensorRT's explicit (Q/DQ) mode accepts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from export.errors import ExportError
from export.onnx_export import PROBS_NAME, TAIL_PREFIX

log = logging.getLogger(__name__)

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Normalisations and probability ops whose 8-bit form costs accuracy for no speed: always float.
FLOAT_OPS = frozenset({"LayerNormalization", "GroupNormalization", "InstanceNormalization", "Softmax",
                       "ReduceL2", "LpNormalization"})
FLOAT_LAYER_CHOICES = ("first", "last")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class Int8Options:
    float_layers: tuple[str, ...] = FLOAT_LAYER_CHOICES  # subset of ("first", "last")
    per_channel: bool = True
    method: str = "minmax"
    reduce_range: bool = False  # 7-bit weights: avoids U8S8 overflow on x86 CPUs without VNNI
    target: str = "cpu"  # "cpu" (uint8 activations) or "tensorrt" (symmetric int8 activations)


@dataclass(frozen=True)
class Int8Result:
    path: Path
    float_nodes: list[str]  # nodes left in float (besides ops the quantizer does not handle)
    n_calibration: int
    quantized_nodes: int  # weighted nodes that got int8 weights


def quantize_int8(fp32_path: Path, out_path: Path, batches: Sequence[np.ndarray], options: Int8Options,
                  input_name: str = "image", progress: Callable[[], None] | None = None) -> Int8Result:
    """Quantize the float32 model at ``fp32_path`` into ``out_path``; ``batches`` are uint8 graph inputs
    (``progress`` is called as each is calibrated on)."""
    ort_quant = _import_quantization()
    if not batches:
        raise ExportError("int8 calibration needs at least one frame (--int8-frames DIR)")
    bad = sorted(set(options.float_layers) - set(FLOAT_LAYER_CHOICES))
    if bad:
        raise ExportError(f"--int8-float-layers accepts {FLOAT_LAYER_CHOICES}, got {bad}")
    if options.method not in CALIBRATION_METHODS:
        raise ExportError(f"int8 calibration method must be one of {CALIBRATION_METHODS}, got {options.method!r}")
    prepared = out_path.with_name(out_path.stem + ".prepared.onnx")
    try:
        source = _pre_process(ort_quant, fp32_path, prepared)
        excluded = float_nodes(onnx.load(str(source)), options.float_layers)
        try:
            _quantize_static(ort_quant, source, out_path, _Reader(input_name, batches, progress), excluded, options)
        except Exception as e:  # onnxruntime raises plain Exceptions and its pybind errors
            raise ExportError(f"onnxruntime's quantize_static failed on {fp32_path}: {type(e).__name__}: {e}") from e
    finally:
        prepared.unlink(missing_ok=True)
    quantized = onnx.load(str(out_path))
    n_weighted = _count_quantized_weights(quantized)
    if n_weighted == 0:
        raise ExportError("int8 quantization found no convolution / matmul layer to quantize (all excluded, or the "
                          "model has none, like the pixel k-means baseline): int8 cannot speed it up; export fp32")
    log.info("int8: %d weighted layers quantized, %d nodes kept in float, %d calibration frames", n_weighted,
             len(excluded), len(batches))
    return Int8Result(out_path, excluded, len(batches), n_weighted)


def _pre_process(ort_quant: Any, fp32_path: Path, prepared: Path) -> Path:
    """onnxruntime's recommended pre-processing (ONNX shape inference and its basic ONNX-standard fusions) into
    ``prepared``; the model is quantized as it is when that fails.

    Its symbolic shape inference is skipped: it gives up on some of our graphs (AC's attention reshapes) and then
    dumps ``sym_shape_infer_temp.onnx`` plus a data file into the current directory; ONNX's inference suffices.
    """
    try:
        ort_quant.shape_inference.quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        return prepared
    except Exception as e:  # it raises bare Exceptions
        log.warning("int8: onnxruntime's pre-processing failed (%s); quantizing the model unprocessed", e)
        return fp32_path


def _quantize_static(ort_quant: Any, prepared: Path, out_path: Path, reader: _Reader, excluded: list[str],
                     options: Int8Options) -> None:
    symmetric = options.target == "tensorrt"
    ort_quant.quantize_static(
        str(prepared), str(out_path), reader, quant_format=ort_quant.QuantFormat.QDQ,
        per_channel=options.per_channel, reduce_range=options.reduce_range,
        activation_type=ort_quant.QuantType.QInt8 if symmetric else ort_quant.QuantType.QUInt8,
        weight_type=ort_quant.QuantType.QInt8, nodes_to_exclude=excluded,
        calibrate_method=_method(ort_quant, options.method),
        extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True})


def float_nodes(model: onnx.ModelProto, float_layers: Sequence[str]) -> list[str]:
    """Names of the nodes to leave in float (see the module docstring); the graph's nodes are topologically
    sorted (ONNX requires it), so 'first' and 'last' are positions in ``graph.node``."""
    nodes = list(model.graph.node)
    weighted = [i for i, n in enumerate(nodes) if n.op_type in WEIGHTED_OPS and _has_constant_weight(model, n)]
    if not weighted:
        raise ExportError("int8 quantization found no convolution / matmul layer with constant weights (the pixel "
                          "k-means baseline has none): int8 cannot speed it up; export fp32")
    last = weighted[-1]
    keep = {n.name for n in nodes[last + 1:]}  # upsampling, softmax, tail
    keep.update(n.name for n in nodes if n.name.startswith(TAIL_PREFIX) or PROBS_NAME in n.output
                or n.op_type in FLOAT_OPS)
    # activation x activation products (attention's QK^T and AV): 8-bit operands wreck the attention weights
    # (AC: label agreement 0.56 -> 0.99 when they stay float); onnxruntime's MatMulConstBOnly is not honoured in QDQ
    keep.update(n.name for n in nodes if n.op_type in ("MatMul", "Gemm") and not _has_constant_weight(model, n))
    if "first" in float_layers:
        keep.add(nodes[weighted[0]].name)
    if "last" in float_layers:
        keep.add(nodes[last].name)
    unnamed = [n.op_type for n in nodes if not n.name]
    if unnamed:
        raise ExportError(f"int8 quantization needs named nodes; unnamed: {unnamed[:5]}")
    return sorted(keep)


def _has_constant_weight(model: onnx.ModelProto, node: onnx.NodeProto) -> bool:
    inits = {i.name for i in model.graph.initializer}
    constants = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return len(node.input) > 1 and (node.input[1] in inits or node.input[1] in constants)


def _count_quantized_weights(model: onnx.ModelProto) -> int:
    """Weighted nodes whose weight input comes from a DequantizeLinear (QDQ format)."""
    dq_outputs = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return sum(1 for n in model.graph.node
               if n.op_type in WEIGHTED_OPS and len(n.input) > 1 and n.input[1] in dq_outputs)


class _Reader:
    """onnxruntime's CalibrationDataReader protocol: ``get_next() -> {input: array} | None``."""

    def __init__(self, input_name: str, batches: Sequence[np.ndarray], progress: Callable[[], None] | None = None):
        self.input_name = input_name
        self.batches = list(batches)
        self.progress = progress
        self._it: Iterator[np.ndarray] = iter(self.batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        if batch is not None and self.progress is not None:
            self.progress()
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:
        self._it = iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _method(ort_quant: Any, name: str) -> Any:
    return {"minmax": ort_quant.CalibrationMethod.MinMax, "entropy": ort_quant.CalibrationMethod.Entropy,
            "percentile": ort_quant.CalibrationMethod.Percentile}[name]


def _import_quantization() -> Any:
    try:
        import onnxruntime.quantization as ort_quant
    except ImportError as e:
        raise ExportError("int8 export needs onnxruntime's quantization tools: pip install onnxruntime") from e
    return ort_quant
