"""Every registered method resumes to the result of an uninterrupted run (issues 3 and 4: "resume after a kill").

A run stopped after 3 of 4 steps (mid-epoch 2, after PiCIE's k-means and IIC/AC's head switch of that epoch)
and resumed from its ``last`` checkpoint must end with bit-identical weights and buffers to a run that went
straight through. The engine's own test kills a real ``python -m training fit`` with SIGKILL (toy method); this
one proves each real method's state — parameters, buffers, ``extra_state`` and its use of the global RNGs —
survives a checkpoint.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.conftest import SAMPLE_DIR
from tests.tiny_configs import TINY
from training.engine import fit
from training.methods.base import available_methods, get_method_class


def _methods() -> list[str]:
    return [n for n in available_methods() if get_method_class(n).__module__.startswith("training.methods")]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("frames")
    for path in sorted((SAMPLE_DIR / "images").iterdir())[:8]:
        shutil.copy(path, folder / path.name)
    return folder


def _config(name: str, images: Path, max_steps: int | None) -> dict:
    cls = get_method_class(name)
    tiny = {k: v for k, v in TINY.get(name, {}).items() if k in cls.config_class.__dataclass_fields__}
    return {"method": name, "method_config": {"n_clusters": 4, **tiny},
            "data": {"train": {"kind": "folder", "root": str(images), "crop": 64, "channels": 1}, "eval": None},
            "train": {"epochs": 2, "batch_size": 4, "num_workers": 0, "device": "cpu", "seed": 3,
                      "max_steps": max_steps}}


@pytest.mark.parametrize("name", _methods())
def test_stop_and_resume_equals_uninterrupted(name, images, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    fit(_config(name, images, None), straight)
    first = fit(_config(name, images, 3), resumed)
    fitted = get_method_class(name).gradient_free  # fitted at the epoch start, stopped after one step
    assert (first.step, first.stopped) == ((1, "fitted") if fitted else (3, "max_steps"))
    second = fit(_config(name, images, None), resumed, resume=True)
    assert second.step == (1 if fitted else 4)
    a = load_file(straight / "checkpoints" / "last" / "model.safetensors")
    b = load_file(resumed / "checkpoints" / "last" / "model.safetensors")
    assert a.keys() == b.keys()
    different = [k for k in a if not (a[k] == b[k]).all()]
    assert not different, f"{name}: resumed run differs from the uninterrupted one in {different[:5]}"
