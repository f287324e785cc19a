import os

import torch

# Triton kernels run on CPU tensors under the interpreter; it must be set before anything
# imports a @triton.jit kernel. On a GPU machine the real compiler is used.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng():
    """Fresh random inputs every run (the seed is printed on failure via the test id's output)."""
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"random seed: {seed}")
    return np.random.default_rng(seed)


def pytest_report_header(config):
    return [f"torch {torch.__version__}, cuda available: {torch.cuda.is_available()}, "
            f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')}"]
