"""AC presets: the docs/METHODS.md §3.7 rows resolve and hold the table's values; ac_scratch_cpu trains a step on
the sample."""

from __future__ import annotations

import pytest
import torch

from training.config import load_preset, resolve_config
from training.data import build_dataset
from training.methods.ac import AC
from training.methods.base import FitContext, build_method

# docs/METHODS.md §3.7: K, K_over, T, lr, batch, channels into the net's adapter, Sobel.
SPEC_ROWS = {
    "ac_cocostuff3": (3, 15, 10, 1e-4, 120, 3, "append"),
    "ac_cocostuff15": (15, 45, 10, 1e-4, 60, 3, "append"),
    "ac_potsdam3": (3, 24, 10, 1e-5, 75, 4, "off"),
    "ac_potsdam6": (6, 36, 5, 1e-6, 60, 4, "off"),
}


@pytest.mark.parametrize("name", sorted(SPEC_ROWS))
def test_paper_presets_match_spec_a7(name):
    config = resolve_config(load_preset(name))
    method = build_method(config["method"], config["method_config"])
    assert isinstance(method, AC)
    c = method.config
    row = (c.n_clusters, c.over_clusters, c.half_T, c.lr, config["train"]["batch_size"], c.channels, c.input.sobel)
    assert row == SPEC_ROWS[name]
    # §3.8 defaults: λ 1, strict masks, attention (all 16 orderings, grid stride 4), same x for both views, no GT mask
    assert (c.lamb, c.mode, c.attention, c.stride, c.iic_transforms, c.iic_train_mask) == \
        (1.0, "strict", True, 4, False, False)
    assert len(c.ordering_ids) == 16 and c.head_schedule == "epoch" and c.width == 64 and c.n_blocks == 4
    assert config["data"]["train"]["channels"] == c.channels
    assert config["data"]["train"].get("train_labels", False) is False


def test_cpu_preset_trains_a_step_on_the_sample(sample_dir):
    config = resolve_config(load_preset("ac_scratch_cpu"))
    train = build_dataset({**config["data"]["train"], "root": str(sample_dir)}, train=True)
    evaluation = build_dataset({**config["data"]["eval"], "root": str(sample_dir)}, train=False)
    assert evaluation.class_names == ["background", "inclusion", "patches", "scratches"]
    torch.manual_seed(0)
    method = build_method(config["method"], config["method_config"])
    images = torch.stack([train[i]["image"] for i in range(2)])  # (2, 1, 128, 128)
    assert images.shape == (2, 1, 128, 128)
    out = method.training_step({"image": images}, FitContext(device=torch.device("cpu")))
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert sum(p.numel() for p in method.parameters()) < 300_000
