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
