"""Shared pytest settings: deterministic torch with a pinned thread count, so runs that must agree bitwise
(resume, kill -9, subprocess launches, spawned ranks) use the same kernels and reduction order.

``BIGSEER_TEST_THREADS`` (default 1) sets the thread count of this process and, through
``OMP_NUM_THREADS``, of every subprocess and spawned rank. ``.ci/run`` runs the numerics-sensitive tests
(marker ``numerics``) a second time under another kernel dispatch and thread count."""

import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
THREADS = int(os.environ.setdefault("BIGSEER_TEST_THREADS", "1"))
os.environ["OMP_NUM_THREADS"] = str(THREADS)  # not setdefault: a user's own setting must not split the kernels

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(THREADS)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(THREADS)
    yield
