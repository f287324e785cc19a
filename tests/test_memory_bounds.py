"""encode/generate run a batch in pieces, so their peak memory beyond the result does not grow with N
(issue 24): measured as the peak RSS of a fresh process at two batch sizes."""
import json
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import json, resource, sys, torch
torch.set_num_threads(1)
from lsdm_fast import ops
from lsdm_fast.models import Generator, build_autoencoder
what, n, design = sys.argv[1], int(sys.argv[2]), sys.argv[3]
torch.manual_seed(0)
enc, dec = build_autoencoder("conv", 784, 32, image_shape=(28, 28), conv_design=design)
gen = Generator(32, 10, 32, (64, 64))
labels = torch.arange(n) % 10
y = torch.rand(n, 784) if what == "encode" else None
def run(rows):
    if what == "generate":
        return ops.generate(gen.mlp.params(), dec.dense(), labels[:rows], noise_dim=32, num_classes=10,
                            out_dtype=torch.uint8, tail=dec.tail, backend="torch")
    return ops.encode(enc.dense(), y[:rows], front=enc.front, backend="torch")
run(64)  # warm-up: lazy allocations, kernels' first-call state
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = run(n)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"grew_kb": after - before, "out_bytes": out.numel() * out.element_size()}))
"""


def _peak_growth(what: str, n: int, design: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", SCRIPT, what, str(n), design], capture_output=True, text=True,
                         env=env, timeout=600)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("what", ["generate", "encode"])
@pytest.mark.parametrize("design", ["patch", "strided"])
def test_peak_memory_does_not_grow_with_n(what, design):
    small, large = 4096, 20480  # one piece of CHUNK_ROWS["conv"]["cpu"] rows, and five
    a, b = _peak_growth(what, small, design), _peak_growth(what, large, design)
    # the inputs of `encode` (allocated before the measurement) and the results are O(N); everything else is
    # bounded by the piece size. Unchunked, the large call's activations alone would take ~0.7 GB more.
    extra = (b["grew_kb"] - a["grew_kb"]) * 1024 - (b["out_bytes"] - a["out_bytes"])
    assert extra < 96 * 2**20, f"{what} ({design}): peak RSS grew {extra / 2**20:.0f} MB more than the result did " \
                               f"between N={small} and N={large} ({a}, {b})"
