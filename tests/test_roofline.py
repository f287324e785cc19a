"""lsdm_fast/ops/roofline.py: the estimates the kernels' docstrings quote and bench/gpu_check.sh sets
beside the first GPU timings. Checked here: the counts follow the shapes (FLOPs exactly), the bounds
are ordered, the issue-22 changes lower the traffic they were made for, and the docstrings quote the
model's current numbers."""
from __future__ import annotations

import pytest

from lsdm_fast.ops import critic_gp_triton, encode_generate_triton, roofline


def _sum(costs, attr):
    return sum(getattr(k, attr) for k in costs)


def test_critic_flops_are_the_gemms_of_the_step():
    B, w = 4096, [26, 512, 512]
    costs = roofline.critic_step_triton(B, w)
    Bp, R = 4096, 3 * 4096
    gemms = (2 * R * 26 * 512 + 2 * R * 512 * 512  # forward
             + 2 * R * 512 * 512  # backward
             + 2 * 2 * Bp * 512 * 26  # g_0 and r_1
             + 2 * Bp * 512 * 512  # r sweep
             + 2 * R * (512 * 26 + 512 * 512))  # weight gradients
    assert _sum(costs, "flops") == pytest.approx(gemms + sum(n * m + n for n, m in ((512, 26), (512, 512))))
    # 3xTF32 on the interpolated rows' backward and g_0: executed > useful
    assert _sum(costs, "tc_flops") > gemms


@pytest.mark.parametrize("B", [256, 4096, 65536])
def test_bounds_are_ordered_and_graphs_save_launches(B):
    costs = roofline.critic_step_triton(B, [26, 512, 512])
    lo, hi = roofline.total(costs)
    glo, ghi = roofline.total(costs, graph=True)
    assert 0 < lo < hi and 0 < glo < ghi and ghi <= hi


def test_issue22_changes_lower_the_traffic_they_target():
    after, before = (roofline.critic_step_triton(65536, [26, 512, 512], before=b) for b in (False, True))
    assert _sum(after, "hbm_bytes") < 0.7 * _sum(before, "hbm_bytes")  # column tiles first
    enc = [784, 512, 512, 32]
    l2 = {bn: roofline.fused_mlp_triton(2**20, enc, 2, in_bytes=2 * 784, out_bytes=128,
                                        bns=[encode_generate_triton._blocks(n, bn) for n in enc[1:]]).l2_bytes
          for bn in (128, 256)}
    assert l2[256] < 0.85 * l2[128]
    assert encode_generate_triton.BN_MAX_ENCODE_HALF == 256


def test_hot_path_table_and_docstrings_quote_the_model():
    paths = {name: costs for name, _, costs in roofline.hot_paths()}
    text = roofline.report()
    for name in paths:
        assert name in text
    after = paths["critic step B=65536, 26-512-512-1, Triton"]
    before = paths["critic step B=65536, Triton before issue 22"]
    doc = critic_gp_triton.__doc__
    assert f"{_sum(after, 'hbm_bytes') / 1e9:.2f}" in doc and f"{_sum(before, 'hbm_bytes') / 1e9:.2f}" in doc
    eg = encode_generate_triton.__doc__
    gen = paths["generate 2^20 MLP bf16, Triton"][0]
    enc = paths["encode 2^20 MLP bf16, Triton"][0]
    assert f"{gen.l2_bytes / 1e9:.1f} GB" in eg and f"{enc.l2_bytes / 1e9:.1f} GB" in eg
