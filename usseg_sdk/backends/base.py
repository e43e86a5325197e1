"""What every inference backend provides: ``run({input_name: array}) -> {output_name: array}`` and its tensors.

A backend knows nothing of frames, tiling or classes; the Segmenter does that once for all of them.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np


@dataclass(frozen=True)
class TensorInfo:
    """A graph input or output: name, numpy dtype (None when unknown) and shape (None for a dynamic axis).

    ``min_shape`` / ``max_shape`` bound the shapes a TensorRT optimisation profile accepts (None: unbounded).
    """

    name: str
    dtype: np.dtype | None
    shape: tuple[int | None, ...] | None
    max_shape: tuple[int, ...] | None = None
    min_shape: tuple[int, ...] | None = None


class Backend(abc.ABC):
    """One loaded model on one device.

    ``thread_safe`` says whether ``run`` may be entered by several threads at once on one instance; a backend
    that is not serialises ``run`` with a lock itself and offers :meth:`clone` for parallel work.
    """

    name: ClassVar[str]
    thread_safe: ClassVar[bool] = True

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    @abc.abstractmethod
    def inputs(self) -> list[TensorInfo]: ...

    @property
    @abc.abstractmethod
    def outputs(self) -> list[TensorInfo]: ...

    @abc.abstractmethod
    def run(self, feeds: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        """Run the graph; returns host numpy arrays for ``output_names``."""

    def metadata(self) -> dict[str, str]:
        """Key/value metadata stored in the model file (ONNX ``metadata_props``); empty when there is none."""
        return {}

    def clone(self) -> Backend:
        """A backend for another thread. Thread-safe backends return themselves (sharing weights)."""
        return self

    def describe(self) -> dict[str, Any]:
        """What a person debugging a deployment wants to see: backend, device, providers, versions."""
        return {"backend": self.name, "path": str(self.path)}

    def close(self) -> None:  # noqa: B027 - optional hook, most backends free on garbage collection
        """Release device resources early (optional)."""
