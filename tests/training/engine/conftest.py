"""One intra-op thread for the engine tests: the nets are tiny, and on a shared 2-core machine OpenMP's spinning
threads cost three times the CPU. Subprocesses get ``OMP_NUM_THREADS=1`` through :func:`single_thread_env`
(the SIGKILL test compares their weights bit for bit with an in-process run, so both use one thread)."""

import os

import pytest
import torch


def single_thread_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
