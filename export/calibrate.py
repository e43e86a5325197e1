"""``--calibrate IMAGES MASKS``: name the clusters at export time from a few labelled frames.

The same fit as ``usseg calibrate``, from the same library (:mod:`usseg_sdk.calibrate`): the freshly exported
graph (identity mapping) runs on the frames through ``Segmenter`` on the CPU, the mapping is fitted
(``usseg_sdk.metrics.fit_mapping``: auto, hungarian, many_to_one or miou), and the pipeline writes it into the
metadata and the graph's two initializers with :func:`usseg_sdk.calibrate.set_mapping`.
"""

from __future__ import annotations

from pathlib import Path

from usseg_sdk.calibrate import CalibrationOptions, CalibrationResult, set_mapping
from usseg_sdk.calibrate import calibrate as calibrate_model
from usseg_sdk.config import SegmenterConfig
from usseg_sdk.metrics import MAPPING_MODES
from usseg_sdk.segmenter import Segmenter

MODES = ("auto", *MAPPING_MODES)
__all__ = ["MODES", "CalibrationOptions", "CalibrationResult", "calibrate", "print_calibration", "set_mapping"]


def calibrate(model_path: Path, options: CalibrationOptions) -> CalibrationResult:
    """Fit the cluster-to-class mapping of the ONNX model at ``model_path`` on the labelled frames (CPU, tiled as
    the model's metadata says, as the line will run them)."""
    config = SegmenterConfig(device="cpu", clusters=True, scores=False)
    with Segmenter(model_path, config=config) as seg:
        return calibrate_model(seg, options)


def print_calibration(result: CalibrationResult) -> None:
    """The calibration metrics, for the CLI."""
    print(result.summary())
