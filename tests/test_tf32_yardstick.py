"""The TF32 yardstick's emulated critic step (tests/tf32_yardstick.py) is the critic step: with exact GEMMs it
equals the float64 PyTorch reference on every configuration the Triton parity tests draw (both penalties, both
slopes, 2-4 layers, no condition); with TF32 GEMMs it loses what TF32 loses (between 1e-5 and 1e-1)."""
import numpy as np
import pytest
import torch

from lsdm_fast.ops import critic_gradient_penalty, critic_score_grad
from test_critic_gp_triton_cuda import CFG_IDS, CONFIGS, _critic, _inputs, _rel
from tf32_yardstick import ALL_EXACT, EXACT, TF32, TRITON_TF32, emulated_score, emulated_step, step_errors


@pytest.mark.parametrize("cfg", CONFIGS, ids=CFG_IDS)
def test_the_emulated_step_is_the_step(cfg, rng):
    B, widths, dx, po, slope = cfg
    critic = _critic(rng, widths, slope, torch.float64, "cpu")
    x, zr, zf, t = _inputs(rng, B, widths, dx, torch.float64, "cpu")
    gp = float(rng.uniform(1.0, 10.0))
    ref = critic_gradient_penalty(critic, x, zr, zf, t, gp_weight=gp, penalty_over=po, backend="torch")
    exact = step_errors(emulated_step(critic, x, zr, zf, t, gp, po, ALL_EXACT), ref, _rel)
    assert max(exact.values()) < 1e-10, exact
    s, gz = critic_score_grad(critic, x, zr, backend="torch")
    es, egz = emulated_score(critic, x, zr, EXACT)
    assert _rel(es, s) < 1e-10 and _rel(egz, gz) < 1e-10


def test_tf32_loses_what_tf32_loses():
    rng = np.random.default_rng(0)
    B, widths, dx, po, slope = 256, [42, 128, 128, 1], 10, "latent", 0.2
    critic = _critic(rng, widths, slope, torch.float64, "cpu")
    x, zr, zf, t = _inputs(rng, B, widths, dx, torch.float64, "cpu")
    ref = critic_gradient_penalty(critic, x, zr, zf, t, gp_weight=5.0, penalty_over=po, backend="torch")
    errs = step_errors(emulated_step(critic, x, zr, zf, t, 5.0, po, TRITON_TF32), ref, _rel)
    weights = [v for k, v in errs.items() if k.startswith("dW")]
    assert 1e-5 < max(weights) < 1e-1, errs
    _, gz = critic_score_grad(critic, x, zr, backend="torch")
    assert 1e-5 < _rel(emulated_score(critic, x, zr, TF32)[1], gz) < 1e-1
