"""Which metadata a model runs with: the sidecar ``model.json`` beside it, or the copy embedded in the ONNX file.

Export writes both copies, identical, and ``usseg calibrate`` rewrites both. A line engineer edits the sidecar (a
class renamed, a class that is not a defect after all, a colour): that edit must take effect, so

* **the sidecar wins when present**: ``<model>.json`` (``model.onnx.json``, ``model.engine.json``) or
  ``<stem>.json``; the generic ``model.json`` also for a model file of another name that embeds nothing (an engine);
* a sidecar that cannot be used (invalid JSON, a newer schema version, a bad field) is a
  :class:`~usseg_sdk.errors.ModelLoadError` naming it — never a silent fall back to the embedded copy;
* the embedded copy is the fallback for a model file travelling alone;
* when both exist they are compared. Fields the graph itself fixes (``n_clusters``, input channels, layout, dtype,
  in-graph normalisation and Sobel, the clusters output) must agree, else the sidecar belongs to another model:
  an error naming both files. An edited ``cluster_to_class`` or class count is honoured by the runtime mapping
  the ``clusters`` output itself (the graph's ``labels`` and ``scores`` follow the embedded mapping, so scores are
  off) with a WARNING; other differences that change what a line sees (classes, input) log a WARNING naming both
  files and the fields, the rest (colours, tiling, calibration notes) an INFO line.

:class:`MetaSource` records which file was read and the differences; ``usseg info`` prints it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from usseg_sdk.backends import Backend
from usseg_sdk.errors import ModelLoadError, ModelMetaError
from usseg_sdk.meta import METADATA_KEY, ModelMeta

log = logging.getLogger(__name__)

# Fields the graph fixes: a sidecar that disagrees here describes another graph.
STRUCTURAL = ("n_clusters", "input.channels", "input.layout", "input.dtype", "input.normalized_in_graph",
              "input.sobel", "outputs.clusters")


@dataclass(frozen=True)
class MetaSource:
    """Where a model's metadata came from: ``kind`` and ``path`` of the file read, the model file whose embedded
    copy was compared with it (``embedded``, None when there was none) and the fields where the two differ."""

    kind: Literal["sidecar", "embedded"]
    path: Path
    embedded: Path | None = None
    differences: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.kind == "embedded":
            return f"{self.path} (embedded {METADATA_KEY}; no sidecar)"
        if self.embedded is None:
            return f"{self.path} (sidecar; the model embeds none)"
        if not self.differences:
            return f"{self.path} (sidecar; the embedded copy agrees)"
        return f"{self.path} (sidecar; differs from the embedded copy in {', '.join(self.differences)})"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.path),
                "embedded": None if self.embedded is None else str(self.embedded),
                "differences": list(self.differences)}


def load_meta(backend: Backend) -> tuple[ModelMeta, MetaSource]:
    """The metadata of the model ``backend`` opened, and where it came from (see the module docstring).

    Every failure is a ModelLoadError naming the file (a newer schema says to upgrade usseg-sdk).
    """
    path = backend.path
    embedded, embedded_error = _embedded(backend)
    sidecar = find_sidecar(path, generic=embedded is None and embedded_error is None)
    if sidecar is None:
        if embedded_error is not None:
            raise ModelLoadError(str(embedded_error)) from embedded_error
        if embedded is None:
            raise ModelLoadError(f"{path} has no usseg metadata (no {METADATA_KEY!r} in the model, no sidecar "
                                 f"{path.name}.json / {path.stem}.json / model.json): not a model exported by usseg")
        return embedded, MetaSource("embedded", path)
    try:
        meta = ModelMeta.load(sidecar)
    except ModelMetaError as e:
        raise ModelLoadError(f"{e} (the sidecar is used when present; fix it, or delete it to use the metadata "
                             f"embedded in {path.name})" if embedded is not None else str(e)) from e
    if embedded is None:
        if embedded_error is not None:
            log.warning("usseg: %s is used; the metadata embedded in %s is unusable: %s", sidecar, path,
                        embedded_error)
        log.info("usseg: metadata for %s from sidecar %s", path, sidecar)
        return meta, MetaSource("sidecar", sidecar)
    return _reconcile(meta, sidecar, embedded, path)


def find_sidecar(path: Path, generic: bool = True) -> Path | None:
    """``<name>.json``, ``<stem>.json``, then (``generic``) ``model.json`` beside ``path``; None when none exists."""
    names = [path.name + ".json", path.stem + ".json"] + (["model.json"] if generic else [])
    return next((path.with_name(n) for n in names if path.with_name(n).is_file()), None)


def _embedded(backend: Backend) -> tuple[ModelMeta | None, ModelMetaError | None]:
    props = backend.metadata()
    if METADATA_KEY not in props:
        return None, None
    try:
        return ModelMeta.from_metadata_props(props, origin=f"{backend.path} (embedded {METADATA_KEY})"), None
    except ModelMetaError as e:
        return None, e


def _reconcile(meta: ModelMeta, sidecar: Path, embedded: ModelMeta, path: Path) -> tuple[ModelMeta, MetaSource]:
    diffs = _differences(meta.model_dump(mode="json"), embedded.model_dump(mode="json"))
    source = MetaSource("sidecar", sidecar, path, tuple(d for d, _, _ in diffs))
    shown = "; ".join(f"{d}: {a!r} in {sidecar.name}, {b!r} embedded" for d, a, b in diffs)
    structural = [d for d in diffs if d[0].startswith(STRUCTURAL)]
    if structural:
        raise ModelLoadError(f"{sidecar} and the metadata embedded in {path} describe different graphs ("
                             + "; ".join(f"{d}: {a!r} vs {b!r}" for d, a, b in structural)
                             + f"): the sidecar belongs to another model; re-export, or delete {sidecar.name} to "
                             "use the embedded copy")
    if not diffs:
        return meta, source
    remapped = meta.cluster_to_class != embedded.cluster_to_class or meta.n_classes != embedded.n_classes
    note = ""
    if remapped and meta.outputs.labels is not None:  # the graph's labels/scores follow the embedded mapping
        meta = meta.model_copy(update={"outputs": meta.outputs.model_copy(update={"labels": None, "scores": None})})
        note = (" The runtime maps the clusters output through the sidecar's cluster_to_class itself and class "
                "scores are off (the graph's follow the embedded classes); usseg calibrate rewrites both copies.")
    level = logging.WARNING if any(_changes_predictions(d) for d, _, _ in diffs) else logging.INFO
    log.log(level, "usseg: %s is used; it differs from the metadata embedded in %s: %s.%s", sidecar, path, shown,
            note)
    return meta, source


def _changes_predictions(field: str) -> bool:
    """Classes (names, defect flags, count), the mapping and the input change what a line sees; colours do not."""
    return field.startswith(("cluster_to_class", "input")) or (field.startswith("classes")
                                                               and not field.endswith(".color"))


def _differences(a: Any, b: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """(field path, a's value, b's value) where two JSON values differ; lists of objects compared item by item."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in [*a, *(k for k in b if k not in a)]:
            out += _differences(a.get(key), b.get(key), f"{path}.{key}" if path else key)
        return out
    same_length = isinstance(a, list) and isinstance(b, list) and len(a) == len(b)
    if same_length and any(isinstance(x, dict) for x in a):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in _differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [(path, a, b)]
