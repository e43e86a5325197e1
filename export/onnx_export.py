"""Inference graph -> ONNX model that follows docs/ARCHITECTURE.md "The exported graph" to the letter.

Two steps:

1. torch exports :class:`~export.graph.InferenceGraph` (uint8 ``image`` -> probabilities) at the pinned opset
   :data:`OPSET`. The exporter is torch 2.13's default, ``torch.onnx.export(dynamo=True)`` (``torch.export`` +
   onnxscript, with its graph optimiser); when it fails, the legacy TorchScript exporter is tried and the reason
   is logged and recorded in ``ModelMeta.exporter``. ``--exporter`` forces either.
2. :func:`append_contract_tail` adds the nodes the runtime and ``usseg calibrate`` rely on, with onnx.helper so
   their names never depend on the exporter: ``ArgMax`` over clusters -> ``Cast`` -> ``clusters`` (uint8);
   ``Gather`` on the int64 initializer ``usseg_cluster_to_class`` -> ``Cast`` -> ``labels`` (uint8); optionally
   ``Einsum("ck,bkhw->bchw")`` of the float32 initializer ``usseg_class_from_cluster`` (one-hot columns) with
   the probabilities -> ``scores`` (float32).

:func:`check_contract` re-reads a model and checks all of it (input, outputs, initializers, metadata); export
runs it after every rewrite (calibration, fp16, int8).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from export.errors import ExportError
from export.graph import InferenceGraph
from usseg_sdk.atomic import atomic_path
from usseg_sdk.meta import MAPPING_INITIALIZER, METADATA_KEY, SCORES_INITIALIZER, ModelMeta

log = logging.getLogger(__name__)

OPSET = 18  # pinned: onnxruntime >= 1.14 and TensorRT 10/11's ONNX parser support it; the dynamo exporter's floor
INPUT_NAME = "image"
PROBS_NAME = "usseg_probs"  # (B, K, H, W) float probabilities inside the graph, not an output
ARGMAX_NAME = "usseg_cluster_index"  # (B, H, W) int64
TAIL_PREFIX = "usseg_tail_"  # node names of the contract tail (kept out of fp16 / int8 rewrites)
DIM_NAMES = ("batch", "height", "width")
EXPORTERS = ("auto", "dynamo", "torchscript")


@dataclass(frozen=True)
class ExportedGraph:
    model: onnx.ModelProto
    exporter: str  # what ModelMeta.exporter records, e.g. "torch.onnx dynamo (torch 2.13.0)"


# -- 1. torch -> ONNX ------------------------------------------------------------------------------------------
def export_graph(graph: InferenceGraph, example: torch.Tensor, *, dynamic: bool, min_size: int = 1,
                 exporter: str = "auto", opset: int = OPSET) -> ExportedGraph:
    """Export ``graph`` (eval mode) on ``example`` (uint8 (B, C, H, W)); symbolic batch/height/width with
    ``dynamic`` (the example's batch must then be >= 2: torch.export specialises sizes 0 and 1)."""
    if exporter not in EXPORTERS:
        raise ExportError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    if dynamic and example.shape[0] < 2:
        raise ExportError("a dynamic export needs an example batch of at least 2 (torch.export specialises 1)")
    graph.eval()
    failure = None
    if exporter in ("auto", "dynamo"):
        try:
            model = _export_dynamo(graph, example, dynamic, min_size, opset)
            return ExportedGraph(_finish(model, example, dynamic), f"torch.onnx dynamo (torch {torch.__version__})")
        except Exception as e:  # the exporter raises many types; any failure is a reason to fall back
            if exporter == "dynamo":
                raise ExportError(f"the dynamo ONNX exporter failed: {type(e).__name__}: {e}") from e
            failure = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
            log.warning("the dynamo ONNX exporter failed (%s); falling back to the TorchScript exporter", failure)
    try:
        model = _export_torchscript(graph, example, dynamic, opset)
    except Exception as e:
        raise ExportError(f"the TorchScript ONNX exporter failed: {type(e).__name__}: {e}"
                          + (f" (dynamo failed before: {failure})" if failure else "")) from e
    name = f"torch.onnx torchscript (torch {torch.__version__})"
    if failure:
        name += f"; dynamo failed: {failure}"
    return ExportedGraph(_finish(model, example, dynamic), name)


def _export_dynamo(graph: InferenceGraph, example: torch.Tensor, dynamic: bool, min_size: int,
                   opset: int) -> onnx.ModelProto:
    shapes = None
    if dynamic:
        dim = torch.export.Dim
        shapes = ({0: dim("batch", min=1), 2: dim("height", min=max(2, min_size)),
                   3: dim("width", min=max(2, min_size))},)
    with _quiet():
        program = torch.onnx.export(graph, (example,), None, dynamo=True, input_names=[INPUT_NAME],
                                    output_names=[PROBS_NAME], opset_version=opset, dynamic_shapes=shapes,
                                    optimize=True, external_data=False, verbose=False)
    return program.model_proto


def _export_torchscript(graph: InferenceGraph, example: torch.Tensor, dynamic: bool, opset: int) -> onnx.ModelProto:
    axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}} if dynamic else None
    buffer = io.BytesIO()
    with _quiet():
        torch.onnx.export(graph, (example,), buffer, dynamo=False, input_names=[INPUT_NAME],
                          output_names=[PROBS_NAME], opset_version=opset, dynamic_axes=axes,
                          do_constant_folding=True)
    return onnx.load_from_string(buffer.getvalue())


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters print progress and log optimiser passes at INFO; export logs its own summary instead."""
    loggers = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir", "torch.onnx", "torch.export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _finish(model: onnx.ModelProto, example: torch.Tensor, dynamic: bool) -> onnx.ModelProto:
    """Name the input's axes (batch, height, width) and check the exporter kept what was asked."""
    if [i.name for i in model.graph.input] != [INPUT_NAME] or [o.name for o in model.graph.output] != [PROBS_NAME]:
        raise ExportError(f"the exporter produced inputs {[i.name for i in model.graph.input]} and outputs "
                          f"{[o.name for o in model.graph.output]}, expected [{INPUT_NAME!r}] -> [{PROBS_NAME!r}]")
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for axis, name in zip((0, 2, 3), DIM_NAMES, strict=True):
        if dynamic:
            if dims[axis].HasField("dim_value"):
                raise ExportError(f"the exporter made input axis {axis} ({name}) static ({dims[axis].dim_value}); "
                                  "the net specialises on the example size")
            dims[axis].dim_param = name
        elif dims[axis].dim_value != example.shape[axis]:
            raise ExportError(f"input axis {axis} is {dims[axis]} in the exported graph, expected "
                              f"{example.shape[axis]}")
    return model


# -- 2. the contract tail --------------------------------------------------------------------------------------
def append_contract_tail(model: onnx.ModelProto, cluster_to_class: list[int], n_classes: int,
                         scores: bool) -> onnx.ModelProto:
    """Replace the ``usseg_probs`` output by ``clusters``, ``labels`` and (with ``scores``) ``scores``."""
    g = model.graph
    if [o.name for o in g.output] != [PROBS_NAME]:
        raise ExportError(f"expected the single output {PROBS_NAME!r}, found {[o.name for o in g.output]}")
    if not cluster_to_class:
        raise ExportError("cluster_to_class is empty")
    mapping = np.asarray(cluster_to_class, np.int64)  # (K,)
    g.initializer.append(numpy_helper.from_array(mapping, MAPPING_INITIALIZER))
    g.node.extend([
        helper.make_node("ArgMax", [PROBS_NAME], [ARGMAX_NAME], name=TAIL_PREFIX + "argmax", axis=1, keepdims=0),
        helper.make_node("Cast", [ARGMAX_NAME], ["clusters"], name=TAIL_PREFIX + "clusters", to=TensorProto.UINT8),
        helper.make_node("Gather", [MAPPING_INITIALIZER, ARGMAX_NAME], ["usseg_label_index"],
                         name=TAIL_PREFIX + "gather", axis=0),
        helper.make_node("Cast", ["usseg_label_index"], ["labels"], name=TAIL_PREFIX + "labels", to=TensorProto.UINT8),
    ])
    batch, _, height, width = _input_dims(model)
    outputs = [helper.make_tensor_value_info("clusters", TensorProto.UINT8, [batch, height, width]),
               helper.make_tensor_value_info("labels", TensorProto.UINT8, [batch, height, width])]
    if scores:
        g.initializer.append(numpy_helper.from_array(one_hot(mapping, n_classes), SCORES_INITIALIZER))
        g.node.append(helper.make_node("Einsum", [SCORES_INITIALIZER, PROBS_NAME], ["scores"],
                                       name=TAIL_PREFIX + "scores", equation="ck,bkhw->bchw"))
        outputs.append(helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, n_classes, height, width]))
    probs_info = next(o for o in g.output if o.name == PROBS_NAME)
    g.value_info.append(probs_info)
    del g.output[:]
    g.output.extend(outputs)
    return model


def one_hot(mapping: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, K) float32 with a 1 at [mapping[k], k]: scores = this @ probabilities."""
    out = np.zeros((n_classes, len(mapping)), np.float32)
    out[mapping, np.arange(len(mapping))] = 1.0
    return out


def _input_dims(model: onnx.ModelProto) -> list[str | int]:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return [d.dim_param if d.dim_param else d.dim_value for d in dims]


# -- metadata, checks, writing ---------------------------------------------------------------------------------
def set_metadata(model: onnx.ModelProto, meta: ModelMeta) -> onnx.ModelProto:
    """Embed ``meta`` as ``metadata_props["usseg.meta"]`` (replacing an older entry)."""
    kept = [(p.key, p.value) for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    for key, value in [*kept, *meta.to_metadata_props().items()]:
        model.metadata_props.add(key=key, value=value)
    model.producer_name = "usseg export"
    model.doc_string = f"usseg {meta.method} model, {meta.n_clusters} clusters -> {meta.n_classes} classes"
    return model


def check_contract(model: onnx.ModelProto, meta: ModelMeta, *, full_check: bool = True) -> None:
    """Everything docs/ARCHITECTURE.md promises about the graph; an ExportError names the first broken promise."""
    try:
        onnx.checker.check_model(model, full_check=full_check)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"onnx.checker rejects the exported model: {e}") from e
    g = model.graph
    inputs = [(i.name, i.type.tensor_type.elem_type) for i in g.input]
    if inputs != [(INPUT_NAME, TensorProto.UINT8)]:
        raise ExportError(f"graph inputs must be [('image', uint8)], got {inputs}")
    dims = g.input[0].type.tensor_type.shape.dim
    if len(dims) != 4 or dims[1].dim_value != meta.input.channels:
        raise ExportError(f"input 'image' must be (B, {meta.input.channels}, H, W), got {_input_dims(model)}")
    want = {"clusters": TensorProto.UINT8, "labels": TensorProto.UINT8}
    if meta.outputs.scores is not None:
        want["scores"] = TensorProto.FLOAT
    got = {o.name: o.type.tensor_type.elem_type for o in g.output}
    if got != want:
        raise ExportError(f"graph outputs must be {want} (name: ONNX type), got {got}")
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer if i.name.startswith("usseg_")}
    mapping = inits.get(MAPPING_INITIALIZER)
    if mapping is None or mapping.dtype != np.int64 or mapping.tolist() != list(meta.cluster_to_class):
        raise ExportError(f"initializer {MAPPING_INITIALIZER} must be int64 {meta.cluster_to_class}, got {mapping!r}")
    if meta.outputs.scores is not None:
        onehot = inits.get(SCORES_INITIALIZER)
        expect = one_hot(np.asarray(meta.cluster_to_class), meta.n_classes)
        if onehot is None or onehot.dtype != np.float32 or not np.array_equal(onehot, expect):
            raise ExportError(f"initializer {SCORES_INITIALIZER} must be float32 one-hot {expect.shape}")
    props = {p.key: p.value for p in model.metadata_props}
    if ModelMeta.from_metadata_props(props, origin="exported model") != meta:
        raise ExportError("the embedded usseg.meta differs from the metadata being written")


def save_model(model: onnx.ModelProto, path: Path) -> Path:
    """Serialise to ``path`` atomically (one file, no external data: our nets are far below protobuf's 2 GB)."""
    data = model.SerializeToString()
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def node_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
