"""DDP on CPU (gloo, 2 processes): one step of 2 ranks x batch b equals one process with batch 2b.

The spawned workers join a process group themselves and the engine adopts it (the ``torchrun`` path, where the
engine creates the group from the environment, differs only in that call; ``test_torchrun_cli`` runs it and is
marked slow).
"""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from tests.training.engine.conftest import single_thread_env
from tests.training.engine.toy_methods import ToyImages
from training import checkpoint as ck
from training.engine import fit

TRAIN = ToyImages(16, size=12, crop=8)
EVAL = ToyImages(5, size=12, train=False)  # 5 images: the ranks get 3 and 2
B = 4
CASES = {
    "per_sample": {"loss": "per_sample"},
    "marginal": {"loss": "marginal"},
    "marginal_without_all_reduce": {"loss": "marginal", "use_all_reduce": False},
}


def _config(method_config, batch_size):
    return {"method": "toy_seg", "method_config": {"augment": False, "over_clusters": 5, "lr": 5.0, **method_config},
            "data": {"train": {"kind": "toy"}},
            "train": {"epochs": 1, "max_steps": 1, "batch_size": batch_size, "num_workers": 0, "log_every": 1}}


def _worker(rank, world, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        for name, method_config in CASES.items():
            fit(_config(method_config, B), os.path.join(out_dir, name) if rank == 0 else "ignored-on-rank-1",
                train_dataset=TRAIN, eval_dataset=EVAL)
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _weights(run):
    return load_file(run / "checkpoints" / "last" / ck.MODEL_FILE)


def _eval(run):
    return ck.open_checkpoint(run / "checkpoints" / "last").state["metrics"]["eval"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, _free_port(), str(out / "ddp")), nprocs=2, join=True)
    for name, method_config in CASES.items():
        fit(_config(method_config, 2 * B), out / "single" / name, train_dataset=TRAIN, eval_dataset=EVAL)
    return out


def _max_diff(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("case", ["per_sample", "marginal"])
def test_two_ranks_of_batch_b_step_like_one_process_of_batch_2b(runs, case):
    ddp, single = _weights(runs / "ddp" / case), _weights(runs / "single" / case)
    assert ddp.keys() == single.keys()
    start = _weights_at_init()
    assert _max_diff(single, start) > 1e-3  # the step moved the weights
    assert _max_diff(ddp, single) < 1e-6


def test_without_all_reduce_sum_the_marginal_loss_differs(runs):
    """The control: the same loss with rank-local statistics does not match, so the test above can fail."""
    ddp = _weights(runs / "ddp" / "marginal_without_all_reduce")
    single = _weights(runs / "single" / "marginal_without_all_reduce")
    assert _max_diff(ddp, single) > 1e-4


def test_evaluation_sums_the_confusion_of_all_ranks(runs):
    ddp, single = _eval(runs / "ddp" / "per_sample"), _eval(runs / "single" / "per_sample")
    assert ddp["pixels"] == single["pixels"] == 5 * 11 * 12
    assert ddp["miou"] == pytest.approx(single["miou"]) and ddp["over/miou"] == pytest.approx(single["over/miou"])


def test_rank_zero_alone_writes_the_run(runs):
    run = runs / "ddp" / "per_sample"
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["event"] for r in lines if r["kind"] == "event"] == ["start", "end"]
    assert lines[0]["world_size"] == 2
    state = ck.open_checkpoint(run / "checkpoints" / "last").state
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert not os.path.exists("ignored-on-rank-1")


def _weights_at_init():
    from training.loaders import seed_everything
    from training.methods.base import build_method

    seed_everything(0)
    method = build_method("toy_seg", {"augment": False, "over_clusters": 5, "lr": 5.0})
    return {k: v.detach().clone() for k, v in method.state_dict().items()}


@pytest.mark.slow
def test_torchrun_cli(tmp_path):
    """``torchrun --nproc_per_node 2 -m training fit`` end to end (the engine creates the gloo group)."""
    import cv2
    import yaml

    from tests.training.engine.toy_methods import toy_image

    (tmp_path / "images").mkdir()
    for i in range(16):
        cv2.imwrite(str(tmp_path / "images" / f"{i}.png"), (toy_image(i, 12)[0] * 255).astype("uint8"))
    preset = tmp_path / "p.yaml"
    preset.write_text(yaml.safe_dump({"method": "toy_seg", "data": {"train": {"kind": "folder", "crop": 8,
                                                                               "channels": 1}},
                                      "train": {"epochs": 2, "batch_size": 2, "num_workers": 0}}))
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", str(_free_port()), "-m", "training", "fit", "--plugin",
                             "tests.training.engine.toy_methods", "--preset", str(preset), "--data",
                             str(tmp_path / "images"), "--out", str(tmp_path / "run"), "--no-progress"],
                            cwd=root, capture_output=True, text=True, timeout=300, env=single_thread_env())
    assert result.returncode == 0, result.stderr
    state = ck.open_checkpoint(tmp_path / "run" / "checkpoints" / "last").state
    assert (state["step"], state["world_size"]) == (8, 2)  # 16 images / (2 x 2) = 4 steps per epoch
    assert torch.isfinite(torch.cat([t.flatten() for t in _weights(tmp_path / "run").values()])).all()
