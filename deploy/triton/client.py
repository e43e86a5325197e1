"""Send a frame to a Triton server serving a usseg model and get the label map back.

    python deploy/triton/client.py frame.png --url localhost:8001 --model usseg --meta triton_repo/usseg/model.json \
        [--out labels.png]

The frame is prepared exactly as ``usseg_sdk.Segmenter`` prepares it (colour order, channels, reflect padding to
the stride, from the model's metadata), so a served model gives the labels the embedded SDK gives. Frames larger
than the model's tile are sent whole: tile on the client with ``usseg_sdk.tiling`` if the server's memory needs it.
Needs ``pip install 'usseg-sdk[deploy]'`` (tritonclient's gRPC client).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from usseg_sdk.meta import ModelMeta
from usseg_sdk.preprocess import fill_padded, model_planes, padded_size, to_model_dtype, validate_frame


def prepare(frame: np.ndarray, meta: ModelMeta) -> np.ndarray:
    """(1, C, H', W') graph input for one BGR/grey frame, padded to the model's stride."""
    frame = validate_frame(frame)
    planes = model_planes(frame, meta.input)
    batch = np.empty((1, meta.input.channels, *padded_size(*frame.shape[:2], meta.input)), np.uint8)
    fill_padded(batch[0], planes)
    return to_model_dtype(batch, meta.input)


def infer_labels(frame: np.ndarray, meta: ModelMeta, *, url: str, model: str, timeout_s: float = 10.0) -> np.ndarray:
    """The (H, W) uint8 class map of ``frame`` from the Triton server at ``url`` (gRPC)."""
    try:
        import tritonclient.grpc as grpcclient
    except ImportError as e:
        raise SystemExit("the Triton client is not installed: pip install 'usseg-sdk[deploy]'") from e
    batch = prepare(frame, meta)
    client = grpcclient.InferenceServerClient(url=url)
    inp = grpcclient.InferInput("image", list(batch.shape), "UINT8" if batch.dtype == np.uint8 else "FP32")
    inp.set_data_from_numpy(batch)
    name = meta.outputs.labels or meta.outputs.clusters
    result = client.infer(model, [inp], outputs=[grpcclient.InferRequestedOutput(name)], client_timeout=timeout_s)
    out = result.as_numpy(name).reshape(batch.shape[2:])[: frame.shape[0], : frame.shape[1]]
    if meta.outputs.labels is None:  # a recalibrated engine: map clusters on the client, as the SDK does
        out = np.asarray(meta.cluster_to_class, np.uint8)[out]
    return out.astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("frame", type=Path)
    p.add_argument("--url", default="localhost:8001", help="Triton gRPC endpoint")
    p.add_argument("--model", default="usseg", help="model name in the repository")
    p.add_argument("--meta", type=Path, required=True, help="the model.json copied into the repository")
    p.add_argument("--out", type=Path, help="write the label map as PNG")
    a = p.parse_args(argv)
    frame = cv2.imread(str(a.frame), cv2.IMREAD_UNCHANGED)
    if frame is None:
        raise SystemExit(f"cannot read image {a.frame}")
    meta = ModelMeta.load(a.meta)
    labels = infer_labels(frame, meta, url=a.url, model=a.model)
    areas = {meta.classes[c].name: int(n) for c, n in enumerate(np.bincount(labels.ravel(), minlength=meta.n_classes))}
    print(f"{a.frame.name}: {labels.shape[1]}x{labels.shape[0]} pixels per class {areas}")
    if a.out:
        cv2.imwrite(str(a.out), labels)
    return 0


if __name__ == "__main__":
    sys.exit(main())
