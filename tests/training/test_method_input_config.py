"""The input fields AC and InfoSeg configs share (training.nets.input_adapter.check_input_config): a bad value is a
ConfigError naming the config and the field."""

from __future__ import annotations

import re

import pytest
import torch

from training.errors import ConfigError
from training.methods.base import FitContext, build_method

OWNERS = {"ac": "ACConfig", "infoseg": "InfoSegConfig", "iic": "IICConfig", "picie": "PiCIEConfig"}
BAD = [({"channels": 2}, "channels must be 1 (grey), 3 (RGB) or 4 (RGBIR), got 2"),
       ({"input": {"sobel": "both"}}, "input.sobel must be 'off', 'append' or 'replace', got 'both'"),
       ({"channels": 3, "input": {"mean": [0.5]}}, "input.mean needs 3 values, got (0.5,)"),
       ({"channels": 1, "input": {"std": [0.0]}}, "input.std must be positive, got (0.0,)")]


@pytest.mark.parametrize("method", sorted(OWNERS))
@pytest.mark.parametrize(("fields", "message"), BAD, ids=["channels", "sobel", "mean_length", "std_positive"])
def test_bad_input_field_names_the_config_and_the_field(method, fields, message):
    with pytest.raises(ConfigError) as err:
        build_method(method, fields)
    assert f"{OWNERS[method]}.{message}" in str(err.value)


@pytest.mark.parametrize("method", sorted(OWNERS))
def test_valid_input_fields_build(method):
    m = build_method(method, {"channels": 3, "input": {"sobel": "off", "mean": [0.4, 0.4, 0.4],
                                                       "std": [0.2, 0.2, 0.2]}})
    assert m.config.channels == 3 and m.input_spec().color_order == "rgb"


# -- batches: training.methods.base.batch_images / batch_labels (AC and InfoSeg check their batches with them) ------
from training.errors import DataError  # noqa: E402
from training.methods.base import batch_images, batch_labels  # noqa: E402


@pytest.mark.parametrize(("image", "message"), [
    (None, "AC needs batch['image'] as a float (B, C, H, W) tensor, got NoneType"),
    (torch.zeros(2, 1, 8, 8, dtype=torch.uint8), "got torch.uint8 (2, 1, 8, 8)"),
    (torch.zeros(1, 8, 8), "got torch.float32 (1, 8, 8)"),
    (torch.zeros(2, 3, 8, 8), "batch['image'] has 3 channels, AC is configured for 1 (method_config.channels)"),
], ids=["missing", "uint8", "3d", "channels"])
def test_batch_images_rejects_what_the_method_cannot_take(image, message):
    with pytest.raises(DataError, match=re.escape(message)):
        batch_images({"image": image} if image is not None else {}, "AC", 1)


def test_batch_images_and_labels_pass_good_tensors_through():
    images, labels = torch.zeros(2, 1, 8, 8), torch.zeros(2, 8, 8, dtype=torch.long)
    assert batch_images({"image": images}, "AC", 1) is images
    assert batch_labels({"image": images, "label": labels}, images, "AC") is labels


def test_batch_labels_needs_labels_of_the_images_size():
    images = torch.zeros(2, 1, 8, 8)
    with pytest.raises(DataError, match=r"InfoSeg iic_train_mask=True needs batch\['label'\]"):
        batch_labels({"image": images}, images, "InfoSeg")
    with pytest.raises(DataError, match=re.escape("expected (2, 8, 8) to match batch['image']")):
        batch_labels({"label": torch.zeros(2, 4, 4)}, images, "InfoSeg")


@pytest.mark.parametrize("method", sorted(OWNERS))
def test_a_method_step_rejects_a_batch_of_the_wrong_channels(method):
    m = build_method(method, {"channels": 1})
    ctx = FitContext(device=torch.device("cpu"))
    with pytest.raises(DataError, match="3 channels"):
        m.training_step({"image": torch.rand(2, 3, 32, 32)}, ctx)


# -- one input dataclass for every method; the flat keys of earlier configs still load (saved checkpoints) -------
@pytest.mark.parametrize(("method", "old"), [
    ("iic", {"mean": [0.44], "std": [0.2], "sobel": "off", "input_size": 64}),
    ("ac", {"input_mean": [0.44], "input_std": [0.2], "sobel": "off", "native_size": 64}),
    ("infoseg", {"input_mean": [0.44], "input_std": [0.2], "sobel": "off", "native_size": 64}),
    ("kmeans", {"per_image_norm": True}),
])
def test_legacy_flat_input_keys_land_in_the_input_block(method, old, caplog):
    config = build_method(method, old).config
    assert "old config keys" in caplog.text
    if method == "kmeans":
        assert config.input.per_image_norm
        return
    assert (config.input.mean, config.input.std, config.input.sobel, config.input.native_size) == (
        (0.44,), (0.2,), "off", 64)


def test_picie_input_size_was_the_view_size():
    assert build_method("picie", {"input_size": 48}).config.view_size == 48


def test_a_partial_input_block_keeps_the_methods_other_input_defaults():
    assert build_method("iic", {}).config.input.sobel == "append"  # IIC's Sobel default
    assert build_method("iic", {"input": {"mean": [0.4]}}).config.input.sobel == "append"
    assert build_method("ac", {"input": {"mean": [0.4]}}).config.input.sobel == "off"
