"""SegmenterConfig: defaults, USSEG_* environment variables and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from usseg_sdk.config import ENV_VARS, SegmenterConfig, SegmenterConfigError


def test_defaults():
    cfg = SegmenterConfig()
    assert (cfg.device, cfg.tiling, cfg.tile_size, cfg.overlap, cfg.batch_size, cfg.scores) == \
        ("auto", True, None, None, 8, True)


def test_every_field_from_env():
    env = {"USSEG_DEVICE": "CUDA", "USSEG_PROVIDERS": "CUDAExecutionProvider, CPUExecutionProvider",
           "USSEG_DEVICE_ID": "1", "USSEG_TILING": "yes", "USSEG_TILE_SIZE": "256,1600", "USSEG_OVERLAP": "32",
           "USSEG_BATCH_SIZE": "4", "USSEG_SCORES": "false", "USSEG_CLUSTERS": "0", "USSEG_FRAME_ORDER": "rgb",
           "USSEG_INTRA_OP_THREADS": "2", "USSEG_INTER_OP_THREADS": "1", "USSEG_TRT_FP16": "1",
           "USSEG_TRT_CACHE_DIR": "/tmp/trt", "USSEG_TRT_WORKSPACE_MB": "1024", "USSEG_DATA": "ignored",
           "USSEG_UNRELATED": "x"}
    cfg = SegmenterConfig.from_env(env)
    assert cfg.device == "cuda" and cfg.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert cfg.tile_size == (256, 1600) and cfg.overlap == 32 and cfg.batch_size == 4
    assert cfg.scores is False and cfg.clusters is False and cfg.frame_order == "rgb"
    assert cfg.intra_op_threads == 2 and cfg.trt_fp16 is True and cfg.trt_cache_dir == Path("/tmp/trt")
    assert len(ENV_VARS) == len(SegmenterConfig.model_fields)
    assert SegmenterConfig.from_env({"USSEG_TILE_SIZE": "512"}).tile_size == (512, 512)


def test_overrides_win_over_env():
    assert SegmenterConfig.from_env({"USSEG_DEVICE": "cuda"}, device="cpu").device == "cpu"


@pytest.mark.parametrize("var, value, message", [
    ("USSEG_DEVICE", "gpu", r"device: Input should be 'auto', 'cpu'.* \(got 'gpu'; env USSEG_DEVICE"),
    ("USSEG_TILE_SIZE", "big", r"USSEG_TILE_SIZE='big': expected a size like 512 or 256x1600"),
    ("USSEG_TILE_SIZE", "0x5", "tile_size must be positive"),
    ("USSEG_BATCH_SIZE", "four", "USSEG_BATCH_SIZE='four': expected an integer"),
    ("USSEG_BATCH_SIZE", "0", "batch_size"),
    ("USSEG_SCORES", "maybe", "expected one of 1/0"),
    ("USSEG_PROVIDERS", " , ", "comma-separated provider names"),
])
def test_bad_env_values_name_the_variable(var, value, message):
    with pytest.raises(SegmenterConfigError, match=message):
        SegmenterConfig.from_env({var: value})


def test_replace_and_create_validate():
    cfg = SegmenterConfig(device="cpu")
    assert cfg.replace(batch_size=2).batch_size == 2 and cfg.batch_size == 8
    with pytest.raises(SegmenterConfigError, match="overlap"):
        cfg.replace(overlap=-1)
    with pytest.raises(SegmenterConfigError, match="surprise"):
        SegmenterConfig.create(surprise=1)
