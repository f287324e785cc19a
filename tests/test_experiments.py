"""Baselines and `lsdm experiment`: tiny budgets (smoke runs) plus known-answer checks."""
import json
import os
from dataclasses import replace

import numpy as np
import pytest
import torch

from lsdm_fast.cli import main
from lsdm_fast.data import load_dataset


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread is faster, and far faster on a CPU shared with other jobs."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class _OracleV(torch.nn.Module):
    """The exact v-predictor for data that is a point mass at z_star (per condition: z_star + x)."""

    def __init__(self, z_star, alpha_bar, T):
        super().__init__()
        self.z_star, self.alpha_bar, self.T = z_star, alpha_bar, T
        self.net = torch.nn.Sequential(torch.nn.Linear(1, len(z_star)))  # out_features = latent dim

    def forward(self, z, t, x):
        ab = self.alpha_bar[(t * self.T).round().long()][:, None]
        target = self.z_star + x[:, : len(self.z_star)]
        eps = (z - ab.sqrt() * target) / (1 - ab).sqrt()
        return ab.sqrt() * eps - (1 - ab).sqrt() * target


@pytest.mark.parametrize("n_steps", [1, 3, 50])
def test_ddim_with_oracle_denoiser_lands_on_the_point_mass(n_steps):
    from lsdm_fast.baselines import LatentDiffusion

    ld = LatentDiffusion.__new__(LatentDiffusion)
    ld.T = 1000
    ld.alpha_bar = LatentDiffusion.__init__.__globals__["cosine_alpha_bar"](
        torch.arange(1001, dtype=torch.float64) / 1000).clamp(1e-5, 1).float()
    z_star = torch.tensor([0.5, -1.0, 2.0])
    ld.ema = _OracleV(z_star, ld.alpha_bar, ld.T)
    x = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]).repeat(4, 1)
    z = ld.sample_latent(x, n_steps, seed=3)
    assert torch.allclose(z, z_star + x, atol=1e-4)


def test_pixel_matching_shapes_and_range():
    from lsdm_fast.baselines import PixelMatching, one_hot
    from lsdm_fast.config import MatchingConfig

    cond = one_hot(np.arange(20) % 4, 4)
    y = torch.rand(20, 16)
    pm = PixelMatching(MatchingConfig(steps=3, batch_size=8, critic_steps=2), noise_dim=5,
                       generator_hidden=(16,), critic_hidden=(16,)).fit(cond, y)
    out = pm.sample(cond, seed=1)
    assert out.shape == (20, 16) and out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, pm.sample(cond, seed=1))


def test_experiment_quick_class(tmp_path, capsys):
    out = tmp_path / "ex"
    rc = main(["experiment", "class_n10", "--quick", "--seeds", "0", "--out", str(out),
               "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0
    bars = capsys.readouterr().err  # progress: a bar over the cells with its ETA, one per fit under it
    assert "experiment class_n10: 100%|" in bars and "1/1 [" in bars and "n=10/class seed 0: " in bars
    assert "stage 1: autoencoder" in bars and "stage 2: joint matching" in bars
    for f in ("README.md", "table.md", "results.json", "samples_n_10_class.png", "steps_n_10_class.png"):
        assert os.path.getsize(out / f) > 0, f
    res = json.load(open(out / "results.json"))
    methods = {a["method"] for a in res["aggregate"]}
    assert {"lsdm", "lsdm_paired_only", "pixel_matching", "latent_diffusion (1 steps)"} <= methods
    assert all(a["seeds"] == [0] for a in res["aggregate"])
    table = open(out / "table.md").read()
    assert "| n=10/class | lsdm |" in table and "±" in table and "latent d" in table
    latents = {r["method"]: r.get("latent_dim") for r in res["rows"]}  # the size each fit had (QUICK gives 4)
    assert latents["lsdm"] == latents["lsdm_paired_only"] == 4 and latents["pixel_matching"] is None
    readme = open(out / "README.md").read()
    assert "NOT Inception-FID" in readme and "Wall time" in readme and "Machine" in readme
    for a in res["aggregate"]:
        assert 0 <= a["conditional_accuracy"][0] <= 1 and a["classifier_fd"][0] >= 0

    def resume(*options):  # `lsdm experiment --resume` of the folder above, with `options`
        return main(["experiment", "class_n10", "--quick", "--seeds", "0", "--out", str(out), "--resume", "--quiet",
                     "--cache-dir", str(tmp_path / "cache"), *options])

    def write_without(*fields):  # results.json as written before Budget had `fields`
        (out / "results.json").write_text(json.dumps(dict(res, budget={k: v for k, v in res["budget"].items()
                                                                      if k not in fields})))

    # results written before Budget had pseudo_label ran without pseudo-pairs: with today's default (auto, on for
    # class labels) their resume is refused, with --pseudo-label 0 it is not
    write_without("pseudo_label")
    assert resume() == 2
    assert "written with a different budget" in capsys.readouterr().err
    assert resume("--pseudo-label", "0") == 0
    # ... and before it had pseudo_condition, without pseudo-conditions, which class labels never get: resumed as is
    write_without("pseudo_condition")
    assert resume() == 0
    # results written before Budget had ae_design ran the strided autoencoder: resumed with today's default (patch)
    # they are refused, not continued with another autoencoder
    write_without("ae_design")
    assert resume("--ae-design", "patch") == 2
    assert "written with a different budget (ae_design 'strided' there, 'patch' here)" in capsys.readouterr().err
    # results written before Budget had ae_ema ran without stage 1's weight average: resumed as such, and refused
    # with one
    assert res["budget"]["ae_ema"] == 0.0
    write_without("ae_ema")
    assert resume("--ae-ema", "0.99") == 2
    assert "written with a different budget" in capsys.readouterr().err
    assert resume() == 0
    capsys.readouterr()
    # results written before Budget had penalty_over ran the joint penalty: resumed with today's default (by the
    # conditions: latent for class labels) they are refused, with --penalty-over joint they resume
    assert res["budget"]["penalty_over"] is None
    write_without("penalty_over")
    assert resume() == 2
    assert "written with a different budget (penalty_over 'joint' there, None here)" in capsys.readouterr().err
    assert resume("--penalty-over", "joint") == 0
    capsys.readouterr()
    # results written before Budget had grow_latent / grow_gain / latent_max fitted the latent with 0.1 up to 128
    # (and before grow_gain, by the threshold alone): refused with today's rule, resumed when given that one
    assert (res["budget"]["grow_latent"], res["budget"]["grow_gain"], res["budget"]["latent_max"]) == (0.05, 1.5, 512)
    write_without("grow_latent", "grow_gain", "latent_max")
    assert resume() == 2
    assert ("written with a different budget (grow_gain 0.0 there, 1.5 here, grow_latent 0.1 there, 0.05 here, "
            "latent_max 128 there, 512 here)" in capsys.readouterr().err)
    assert resume("--grow-latent", "0.1", "--grow-gain", "0", "--latent-max", "128") == 0
    capsys.readouterr()
    # results written before Budget had match_steps_max sized stage 2 at most 8,000 steps: refused with today's
    # 16,000, resumed when given that one
    assert res["budget"]["match_steps_max"] == 16000
    write_without("match_steps_max")
    assert resume() == 2
    assert "written with a different budget (match_steps_max 8000 there, 16000 here)" in capsys.readouterr().err
    assert resume("--steps-max", "8000") == 0
    capsys.readouterr()
    # results written before Budget had match_lr trained stage 2 at 3e-4: refused with today's 6e-4, resumed when
    # given that one
    assert res["budget"]["match_lr"] == 6e-4
    write_without("match_lr")
    assert resume() == 2
    assert "written with a different budget (match_lr 0.0003 there, 0.0006 here)" in capsys.readouterr().err
    assert resume("--match-lr", "3e-4") == 0
    capsys.readouterr()
    # results written before Budget had marginal_weight resume as run without it; another weight is refused
    res["budget"].pop("marginal_weight")
    (out / "results.json").write_text(json.dumps(res))
    assert resume("--marginal-weight", "1") == 2
    assert "written with a different budget" in capsys.readouterr().err
    # --resume keeps seed 0 and runs only seed 2
    before = [r for r in res["rows"]]
    capsys.readouterr()
    assert main(["experiment", "class_n10", "--quick", "--seeds", "0,2", "--out", str(out), "--resume",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    log = capsys.readouterr().out
    assert main(["experiment", "class_n10", "--quick", "--seeds", "0,2", "--out", str(out), "--resume", "--quiet",
                 "--cache-dir", str(tmp_path / "cache")]) == 0  # nothing left to run: quiet says only what it wrote
    quiet = capsys.readouterr()
    assert quiet.err == "" and quiet.out == f"wrote {out}: README.md, table.md, results.json and 2 figures\n"
    assert "seed 0]" not in log and "seed 2]" in log
    res = json.load(open(out / "results.json"))
    assert res["rows"][: len(before)] == before and res["seeds"] == [0, 2]
    assert "lsdm experiment class_n10 --quick --seeds 0,2" in open(out / "README.md").read()


def test_all_labels_row_counts_every_image_as_a_pair(tmp_path):
    out = tmp_path / "ex"
    assert main(["experiment", "class_n10", "--quick", "--seeds", "0", "--methods", "lsdm,lsdm_all_labels", "--quiet",
                 "--out", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    rows = {r["method"]: r for r in json.load(open(out / "results.json"))["rows"]}
    n = len(load_dataset("digits", "train").labels)
    assert (rows["lsdm_all_labels"]["paired"], rows["lsdm_all_labels"]["unpaired"]) == (n, 0)
    assert rows["lsdm"]["paired"] + rows["lsdm"]["unpaired"] == n and rows["lsdm"]["paired"] < n


def test_experiment_quick_superres_and_curve(tmp_path, monkeypatch):
    from lsdm_fast import baselines
    widths = []
    init = baselines.PixelMatching.__init__

    def spy(self, *a, **kw):
        init(self, *a, **kw)
        widths.append((self.generator_hidden, self.critic_hidden))

    monkeypatch.setattr(baselines.PixelMatching, "__init__", spy)
    cache = str(tmp_path / "cache")
    assert main(["experiment", "superres_x4", "--quick", "--seeds", "0", "--out", str(tmp_path / "sr"),
                 "--methods", "lsdm,pixel_matching", "--cache-dir", cache, "--latent-dim", "3",
                 "--ae-hidden", "24,12", "--match-hidden", "20,10"]) == 0
    assert widths == [((20, 10), (20, 10))]  # pixel matching takes --match-hidden like LSDM's stage 2
    res = json.load(open(tmp_path / "sr" / "results.json"))
    row = res["rows"][0]
    assert {"psnr_db", "ssim", "consistency_rmse", "latent_w1", "train_nn_ratio", "reconstruction_fd"} <= set(row)
    pixel = [r for r in res["rows"] if r["method"] == "pixel_matching"][0]
    assert "reconstruction_fd" not in pixel  # no autoencoder
    assert "recon-FD" in open(tmp_path / "sr" / "table.md").read()
    b = res["budget"]
    assert b["latent_dim"] == 3 and b["ae_hidden"] == [24, 12] and b["match_hidden"] == [20, 10]
    from lsdm_fast.experiments import Budget, lsdm_config
    cfg = lsdm_config(Budget(**{**b, "ae_hidden": (24, 12), "match_hidden": (20, 10)}), 0, "auto")
    assert cfg.autoencoder.hidden == (24, 12) and cfg.matching.generator_hidden == cfg.matching.critic_hidden == (20, 10)
    assert main(["experiment", "unpaired_curve", "--quick", "--seeds", "0", "--out", str(tmp_path / "uc"),
                 "--cache-dir", cache, "--settings", "m=0,m=all"]) == 0
    res = json.load(open(tmp_path / "uc" / "results.json"))
    assert sorted({r["setting"] for r in res["rows"]}) == ["m=0", "m=all"]  # only the chosen settings ran
    assert main(["experiment", "unpaired_curve", "--quick", "--seeds", "0", "--out", str(tmp_path / "uc"),
                 "--cache-dir", cache, "--resume"]) == 0  # the rest, keeping the first two
    assert [r for r in json.load(open(tmp_path / "uc" / "results.json"))["rows"] if r["setting"] in ("m=0", "m=all")] \
        == [r for r in res["rows"]]
    res = json.load(open(tmp_path / "uc" / "results.json"))
    assert [a["setting"] for a in res["aggregate"]][::2] == ["m=0", "m=1000", "m=10000", "m=all"]  # + reference rows
    res = json.load(open(tmp_path / "uc" / "results.json"))
    assert [a["unpaired"] for a in res["aggregate"]] == sorted(a["unpaired"] for a in res["aggregate"])
    assert os.path.getsize(tmp_path / "uc" / "curve.png") > 0


@pytest.mark.parametrize("argv, message", [
    (["experiment", "nope", "--quick"], "unknown experiment 'nope'"),
    (["experiment", "class_n10", "--quick", "--seeds", "a,b"], "--seeds must be comma-separated integers"),
    (["experiment", "class_n10", "--quick", "--methods", "lsdm,gan"], "unknown method(s) ['gan']"),
    (["experiment", "class_n10", "--quick", "--match-hidden", "8,0"], "--match-hidden: widths must be positive"),
    (["experiment", "unpaired_curve", "--quick", "--settings", "m=5"], "unknown setting(s) ['m=5']"),
])
def test_experiment_bad_arguments(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_latent_diffusion_learns_a_conditional_mixture():
    """Four labelled Gaussian blobs (std 0.3) in 2-d, with an identity 'autoencoder': many-step DDIM
    samples land on their own class's blob with about the right spread."""
    from lsdm_fast.baselines import LatentDiffusion

    class IdentityBase:
        latent_mean, latent_std, device = torch.zeros(2), torch.ones(2), torch.device("cpu")

        def _require_fitted(self):
            pass

        def encode(self, y):
            return y

        def decode(self, z):
            return z

    g = torch.Generator().manual_seed(0)
    lab = torch.randint(4, (2000,), generator=g)
    centers = torch.tensor([[2.0, 2.0], [-2.0, 2.0], [2.0, -2.0], [-2.0, -2.0]])
    y = centers[lab] + 0.3 * torch.randn(2000, 2, generator=g)
    ld = LatentDiffusion(IdentityBase(), steps=1000, hidden=(128, 128)).fit(torch.eye(4)[lab], y)
    z = ld.sample(torch.eye(4)[lab[:400]], 50, seed=1)
    dist = (z - centers[lab[:400]]).norm(dim=1)
    assert (dist < 1.0).float().mean() > 0.95  # right blob
    assert 0.2 < dist.mean() < 0.55  # expected 0.3 * sqrt(pi / 2) = 0.376 for an exact sampler


def test_the_report_states_the_latent_rule():
    from lsdm_fast.experiments.registry import Budget
    from lsdm_fast.experiments.report import budget_note
    note = budget_note(Budget())
    assert ("doubled while the held-out images keep more than 0.05 of their variance unexplained or, once that has "
            "grown it, while the last doubling divided the miss by at least 1.5, up to 512") in note
    assert "divided the miss" not in budget_note(replace(Budget(), grow_gain=0.0))
    assert "fitted" not in budget_note(replace(Budget(), latent_dim=32))
