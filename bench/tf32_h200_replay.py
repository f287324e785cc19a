"""Replays the Triton TF32 critic-step parity failures of the first H200 run (2026-12-04) on the CPU: the same
inputs (drawn from each failure's recorded seed, as tests/test_critic_gp_triton_cuda.py draws them) through the
float64 emulation of the kernel's TF32 arithmetic (tests/tf32_yardstick.py), beside the errors the H200 measured
(copied from the failures' messages). They agree to two or three digits: the kernel computes what it was designed
to, and the tests' TF32 yardstick rests on this.

    python bench/tf32_h200_replay.py
"""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from test_critic_gp_triton_cuda import _critic, _inputs, _f64cpu, _rel
from tf32_yardstick import emulated_step_errors
from lsdm_fast.ops import critic_gradient_penalty
def case(seed, B, widths, dx, po, slope, gp=None, gpu=None, name=""):
    rng = np.random.default_rng(seed)
    critic = _critic(rng, widths, slope, torch.float32, "cpu")
    x, zr, zf, t = _inputs(rng, B, widths, dx, torch.float32, "cpu")
    gp = float(rng.uniform(1.0, 10.0)) if gp is None else gp
    ref = critic_gradient_penalty(_f64cpu(critic), *(v.double() for v in (x, zr, zf, t)), gp_weight=gp, penalty_over=po, backend="torch")
    e = emulated_step_errors(critic, x, zr, zf, t, gp, po, ref, _rel)
    print(name)
    for k in e: print(f"   {k:12s} emulated {e[k]:.2e}   GPU {gpu.get(k, float('nan')):.2e}   ratio {gpu.get(k, float('nan'))/max(e[k],1e-30):.2f}")
case(71224012, 33, [12,37,37,37,1], 5, "latent", 0.0, gpu=dict(loss=0.0011348890741161447, wasserstein=0.0010276701548451817, penalty=0.0011367977516203915, dW0=0.04069206502896559, dW1=0.043814955887853946, dW2=0.02123696245010091, dW3=0.016267560740628205, db0=0.07488347542399883, db1=0.14138718762140307), name="B33-12x37x37x37x1 latent s0")
case(667057056, 70, [12,37,20,1], 5, "joint", 0.2, gp=10.0, gpu=dict(loss=7.254591195839013e-06, wasserstein=0.0009030706993544777, penalty=2.0591443361337264e-07, dW0=0.0013518106798931255, dW1=0.001993828294184027, dW2=0.0013828925478300193, db0=0.020695913906896228, db1=0.043802060863956396), name="row split 7")
case(2159403229, 70, [12,37,20,1], 5, "joint", 0.2, gp=10.0, gpu=dict(loss=0.0009430768917970268, wasserstein=0.0006053875419788964, penalty=0.0009376704153671215, dW0=0.010269253012442593, dW1=0.0055432860797800096, dW2=0.008374110502972747, db0=0.017956965853651568, db1=0.020773893786382253), name="row split 2")
from tf32_yardstick import emulated_score, TF32
from lsdm_fast.ops import critic_score_grad
def score_case(seed, B, widths, dx, slope, gpu, name):
    rng = np.random.default_rng(seed)
    _critic(rng, widths, slope, torch.float32, "cpu"); _inputs(rng, B, widths, dx, torch.float32, "cpu")  # the ieee call
    critic = _critic(rng, widths, slope, torch.float32, "cpu"); x, z, _, _ = _inputs(rng, B, widths, dx, torch.float32, "cpu")
    sr, gzr = critic_score_grad(_f64cpu(critic), x.double(), z.double(), backend="torch")
    es, eg = emulated_score(critic, x, z, TF32)
    print(name, f"score emulated {_rel(es, sr):.2e} GPU {gpu[0]:.2e};  grad emulated {_rel(eg, gzr):.2e} GPU {gpu[1]:.2e}")
score_case(2579819784, 7, [40,130,37,1], 17, 0.2, (0.05100779827980411, 0.000839051423632327), "score B7")
score_case(2445257042, 33, [20,130,37,5,1], 10, 0.2, (0.0037768683331076396, 0.04508456214048695), "score B33")
case(3211491192, 33, [20,37,130,1], 5, "latent", 0.0, gpu=dict(wasserstein=0.0003726543630983309, dW0=0.005414144397721596, dW1=0.004246727355182201, dW2=0.0013401882135414187, db0=0.025915386055641004, db1=0.028332964236808252), name="B33-20x37x130x1 latent s0")
case(1260556512, 300, [42,512,512,1], 10, "latent", 0.2, gpu=dict(loss=0.0003632660456492642, wasserstein=0.0011484445660078291, penalty=0.0003582072296366698, dW0=0.006804314299288225, dW1=0.005804860655222631, dW2=0.00314969763, db0=0.02986369480234128, db1=0.032643102094521176), name="B300 latent")
