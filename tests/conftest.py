import os

import torch

# Triton kernels run on CPU tensors under the interpreter; it must be set before anything
# imports a @triton.jit kernel. On a GPU machine the real compiler is used.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import hashlib  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# Property tests are deterministic in CI: hypothesis derives its examples from each test's name ("derandomize"),
# with no example database, so a run cannot fail by chance. LSDM_FUZZ_EXAMPLES=N turns on the long on-demand mode:
# random examples, N per fuzz test (tests/test_fuzz.py), failures printed with their reproduction blob.
FUZZ_EXAMPLES = int(os.environ.get("LSDM_FUZZ_EXAMPLES") or 0)
settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("long", derandomize=False, database=None, print_blob=True)
settings.load_profile("long" if FUZZ_EXAMPLES else "ci")


@pytest.fixture
def rng(request):
    """Random inputs for parity tests. In CI (CI set) each test draws from a seed fixed by its own id, so a
    run is repeatable and a tolerance cannot fail by chance; elsewhere every run draws fresh inputs.
    LSDM_TEST_SEED=N pins the seed anywhere (to replay a failure: the seed is printed)."""
    if os.environ.get("LSDM_TEST_SEED"):
        seed = int(os.environ["LSDM_TEST_SEED"])
    elif os.environ.get("CI"):
        seed = int.from_bytes(hashlib.sha256(request.node.nodeid.encode()).digest()[:4], "little")
    else:
        seed = int.from_bytes(os.urandom(4), "little")
    print(f"random seed: {seed} (LSDM_TEST_SEED={seed} replays it)")
    return np.random.default_rng(seed)


def pytest_report_header(config):
    return [f"torch {torch.__version__}, cuda available: {torch.cuda.is_available()}, "
            f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')}"]
