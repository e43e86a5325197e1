"""usseg-sdk: run unsupervised segmentation models exported by usseg on inspection-line frames.

Needs only numpy, opencv, pydantic and scipy; onnxruntime or TensorRT are imported by their backend when a
model is loaded. Never imports torch.

Example:
    >>> from usseg_sdk import Segmenter          # doctest: +SKIP
    >>> seg = Segmenter("export_dir/")            # doctest: +SKIP
    >>> result = seg.predict(frame)               # doctest: +SKIP
    >>> result.labels.shape == frame.shape[:2]    # doctest: +SKIP
    True
"""

from __future__ import annotations

import importlib
from typing import Any

from usseg_sdk.errors import (
    BackendUnavailableError,
    InvalidFrameError,
    ModelLoadError,
    ModelMetaError,
    RLEError,
    UssegError,
)
from usseg_sdk.meta import SCHEMA_VERSION, ModelMeta

__version__ = "0.1.0"

# Public names whose modules are imported on first use, so `import usseg_sdk` stays light.
_LAZY: dict[str, str] = {
    "Segmenter": "usseg_sdk.segmenter",
    "SegmenterConfig": "usseg_sdk.config",
    "SegmenterConfigError": "usseg_sdk.config",
    "Segmentation": "usseg_sdk.result",
    "Defect": "usseg_sdk.result",
}

__all__ = [
    "SCHEMA_VERSION",
    "BackendUnavailableError",
    "InvalidFrameError",
    "ModelLoadError",
    "ModelMeta",
    "ModelMetaError",
    "RLEError",
    "UssegError",
    "__version__",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'usseg_sdk' has no attribute {name!r}")
