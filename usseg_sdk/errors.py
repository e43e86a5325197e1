"""Typed errors of the usseg runtime.

Every error the SDK raises on purpose derives from :class:`UssegError`, so line software can catch one
base class. Each message names what was expected and what came.
"""

from __future__ import annotations


class UssegError(Exception):
    """Base class of every error usseg raises on purpose."""


class ModelMetaError(UssegError, ValueError):
    """Model metadata is missing, malformed, or from a schema version this SDK does not know."""


class ModelLoadError(UssegError):
    """A model file is missing, truncated, corrupted, not ONNX/TensorRT, or carries unusable metadata."""


class InvalidFrameError(UssegError, ValueError):
    """A frame handed to ``predict`` is not an image the model can take (None, empty, wrong shape/dtype)."""


class BackendUnavailableError(UssegError, RuntimeError):
    """The requested inference backend or provider is not installed or not usable on this machine."""


class RLEError(UssegError, ValueError):
    """A run-length encoded mask is malformed (odd number of values, runs out of range or overlapping)."""


class CalibrationError(UssegError, ValueError):
    """Calibration inputs are unusable (no image/mask pairs, size mismatch, masks of no known encoding) or the
    fitted mapping is (it names no cluster a defect while the masks hold defects)."""
