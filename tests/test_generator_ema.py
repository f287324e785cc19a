"""Generator EMA in stage 2: the average it keeps, what the generator holds at the end, exact resume."""
import copy

import pytest
import torch

from lsdm_fast import LSDM, LSDMConfig, MatchingConfig
from lsdm_fast.models import Critic, Generator
from lsdm_fast.stages import train_joint_matching
from lsdm_fast.state import Stage, TrainingState


def setup(seed=0):
    torch.manual_seed(seed)
    g, c = Generator(3, 4, 3, (16,)), Critic(4, 3, (16, 16))
    x = torch.eye(4)[torch.arange(40) % 4]
    z = torch.randn(40, 3) + x[:, :3]
    return g, c, x, z


def cfg(ema, steps=8):
    return MatchingConfig(generator_hidden=(16,), critic_hidden=(16, 16), steps=steps, batch_size=16, critic_steps=2,
                          generator_ema=ema, backend="torch", checkpoint_every=1)


class Every:
    """A stand-in checkpointer: calls save(state) after every generator step (the end of the stage is the caller's)."""

    def __init__(self, save):
        self.save = save

    def describe(self):
        return "test"


def run(g, c, x, z, config, rng, checkpoint=None):
    state = TrainingState(None, None, g, c, rng, stage=Stage.MATCHING)
    train_joint_matching(state, x, z, config, progress=False, checkpoint=checkpoint)
    return state


def flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def test_ema_is_the_running_average_and_ends_in_the_generator():
    g, c, x, z = setup()
    decay, seen = 0.75, []
    saver = Every(lambda st: seen.append((flat(g), torch.cat([t.flatten() for t in st.optim["gen_ema"]]))))
    final = run(g, c, x, z, cfg(decay), torch.Generator().manual_seed(0), saver)
    assert len(seen) == 7  # checkpoints after steps 1..7; the end of the stage is the caller's checkpoint

    g_raw, c_raw, _, _ = setup()  # EMA off: the same draws, so the same raw trajectory, raw weights kept
    run(g_raw, c_raw, x, z, cfg(0.0), torch.Generator().manual_seed(0))
    g0, _, _, _ = setup()
    avg = flat(g0)
    for raw, ema in seen + [(flat(g_raw), None)]:  # after each generator step: ema <- decay ema + (1 - decay) w
        avg = decay * avg + (1 - decay) * raw
        if ema is not None:
            torch.testing.assert_close(ema, avg, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(flat(g), avg, rtol=1e-5, atol=1e-7)  # sampling uses the average...
    assert (flat(g) - flat(g_raw)).abs().max() > 1e-4  # ...which is not the raw weights
    torch.testing.assert_close(flat(g), torch.cat([t.flatten() for t in final.optim["gen_ema"]]))


def test_ema_resume_is_exact():
    g, c, x, z = setup()
    run(g, c, x, z, cfg(0.9), torch.Generator().manual_seed(0))

    g1, c1, _, _ = setup()
    rng, saved = torch.Generator().manual_seed(0), {}

    def save(st):
        if st.step == 3:
            saved.update(st=copy.deepcopy(st.optim), g=copy.deepcopy(g1.state_dict()), c=copy.deepcopy(c1.state_dict()),
                         rng=rng.get_state(), hist=copy.deepcopy(st.history))
    run(g1, c1, x, z, cfg(0.9), rng, Every(save))
    g2, c2, _, _ = setup(seed=5)  # different weights, overwritten by the checkpoint
    g2.load_state_dict(saved["g"]), c2.load_state_dict(saved["c"])
    rng2 = torch.Generator()
    rng2.set_state(saved["rng"])
    state = TrainingState(None, None, g2, c2, rng2, stage=Stage.MATCHING, step=3, optim=saved["st"], history=saved["hist"])
    train_joint_matching(state, x, z, cfg(0.9), progress=False)
    assert torch.equal(flat(g2), flat(g)) and torch.equal(flat(g1), flat(g))


def test_ema_config_checked():
    with pytest.raises(ValueError, match=r"generator_ema must be in \[0, 1\)"):
        LSDM(LSDMConfig(matching=MatchingConfig(generator_ema=1.0)))
