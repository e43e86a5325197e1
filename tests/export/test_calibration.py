"""export --calibrate: a thin caller of usseg_sdk.calibrate (the library usseg calibrate uses)."""

from __future__ import annotations

import inspect

import export.calibrate as export_calibrate
import usseg_sdk.calibrate as library


def test_export_calibration_is_a_thin_caller_of_the_library():
    assert export_calibrate.set_mapping is library.set_mapping
    assert export_calibrate.CalibrationOptions is library.CalibrationOptions
    own = {n for n, f in inspect.getmembers(export_calibrate, inspect.isfunction)
           if f.__module__ == export_calibrate.__name__}
    assert own <= {"calibrate", "print_calibration"}
    assert len(inspect.getsource(export_calibrate.calibrate).splitlines()) <= 15


def test_export_takes_a_manual_mapping_without_frames(tmp_path):
    from export.__main__ import build_parser, options_from_args
    from tests.sdk.onnx_models import build_model

    args = build_parser().parse_args(["run", "--map", "3=scratches,1=scratches", "--class-names", "ok,scratches"])
    options = options_from_args(args).calibration
    assert options.manual_map == "3=scratches,1=scratches" and options.images is None and options.masks is None
    path, _ = build_model(tmp_path / "m" / "model.onnx", n_clusters=4)
    result = export_calibrate.calibrate(path, options)
    assert result.meta.cluster_to_class == [0, 1, 0, 1] and result.meta.mapping.kind == "manual"
    assert result.meta.class_names == ["ok", "scratches"]
