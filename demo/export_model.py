"""Stage 2: export the trained run to ONNX, name its clusters on the calibration frames, verify it.

The same pipeline as ``python -m export RUN_DIR --dynamic --head HEAD --calibrate IMAGES MASKS``
(``export.pipeline.export_checkpoint``): the graph takes any frame size (``--dynamic``; NEU-Seg frames are
200x200, which is not a multiple of every method's stride, and a line's frames differ anyway), the mapping is
Hungarian for a head with as many clusters as classes and many-to-one for an over-clustering head, and the
exported model is checked against the torch net through ``usseg_sdk.Segmenter`` on the sample's frames.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from export.calibrate import CalibrationOptions
from export.pipeline import ExportOptions, ExportResult, export_checkpoint


def export_options(out: Path, head: str, calibration: Path) -> ExportOptions:
    return ExportOptions(out=out, head=head, dynamic=True,
                         calibration=CalibrationOptions(images=calibration / "images", masks=calibration / "masks",
                                                        mode="auto", labels_file=calibration / "labels.txt",
                                                        background=0))


def export_run(run_dir: Path, out: Path, head: str, calibration: Path) -> ExportResult:
    """Export ``run_dir``'s final weights (the demo trains without an evaluation split, so best = last)."""
    return export_checkpoint(run_dir, export_options(out, head, calibration), prefer="last")


def export_command(run_dir: Path, out: Path, head: str, calibration: Path) -> str:
    """The equivalent command line, for the summary."""
    parts = ["python", "-m", "export", str(run_dir), "--out", str(out), "--dynamic"]
    parts += ["--head", head] if head != "main" else []
    parts += ["--calibrate", str(calibration / "images"), str(calibration / "masks")]
    return shlex.join(parts)
