"""The input fields AC and InfoSeg configs share (training.nets.input_adapter.check_input_config): a bad value is a
ConfigError naming the config and the field."""

from __future__ import annotations

import pytest

from training.errors import ConfigError
from training.methods.base import build_method

OWNERS = {"ac": "ACConfig", "infoseg": "InfoSegConfig"}
BAD = [({"channels": 2}, "channels must be 1 (grey), 3 (RGB) or 4 (RGBIR), got 2"),
       ({"sobel": "both"}, "sobel must be 'off', 'append' or 'replace', got 'both'"),
       ({"channels": 3, "input_mean": [0.5]}, "input_mean needs 3 values, got (0.5,)"),
       ({"channels": 1, "input_std": [0.0]}, "input_std must be positive, got (0.0,)")]


@pytest.mark.parametrize("method", sorted(OWNERS))
@pytest.mark.parametrize(("fields", "message"), BAD, ids=["channels", "sobel", "mean_length", "std_positive"])
def test_bad_input_field_names_the_config_and_the_field(method, fields, message):
    with pytest.raises(ConfigError) as err:
        build_method(method, fields)
    assert f"{OWNERS[method]}.{message}" in str(err.value)


@pytest.mark.parametrize("method", sorted(OWNERS))
def test_valid_input_fields_build(method):
    m = build_method(method, {"channels": 3, "sobel": "off", "input_mean": [0.4, 0.4, 0.4],
                              "input_std": [0.2, 0.2, 0.2]})
    assert m.config.channels == 3 and m.input_spec().color_order == "rgb"
