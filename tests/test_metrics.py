"""Every metric against a case with a known answer."""
import numpy as np
import pytest
import torch

from lsdm_fast import metrics


def test_frechet_distance_closed_form_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)  # 5 + 1 + 1 + 0
    assert metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want, rel=1e-9)


def test_frechet_distance_closed_form_rotated_gaussians():
    # equal covariances: FD = ||mu1 - mu2||^2 exactly, whatever the covariance
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    s = q @ np.diag([0.1, 1.0, 2.0, 5.0]) @ q.T
    assert metrics.frechet_distance(np.zeros(4), s, np.full(4, 0.5), s) == pytest.approx(1.0, abs=1e-8)


def test_frechet_distance_of_a_set_with_itself_is_zero_and_sample_fd_matches_population():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(500, 6))
    assert metrics.frechet_distance(*metrics.gaussian_stats(f), *metrics.gaussian_stats(f)) == pytest.approx(0, abs=1e-8)
    # large samples of N(0, I) and N(m, 4I): FD -> ||m||^2 + d (2 - 1)^2
    a = rng.normal(size=(40000, 3))
    b = 1.0 + 2.0 * rng.normal(size=(40000, 3))
    fd = metrics.frechet_distance(*metrics.gaussian_stats(a), *metrics.gaussian_stats(b))
    assert fd == pytest.approx(3 + 3, rel=0.03)


def test_wasserstein1_point_masses_and_translation():
    p, q = np.array([0.0, 0.0]), np.array([3.0, 4.0])
    assert metrics.wasserstein1(np.tile(p, (7, 1)), np.tile(q, (5, 1))) == pytest.approx(5.0)
    rng = np.random.default_rng(2)
    a = rng.normal(size=(60, 3))
    v = np.array([1.0, -2.0, 2.0])
    assert metrics.wasserstein1(a, a + v) == pytest.approx(3.0, rel=1e-9)  # W1(mu, mu + v) = ||v||
    assert metrics.wasserstein1(a, a[rng.permutation(60)]) == pytest.approx(0.0, abs=1e-6)
    # two atoms each: {0, 1} vs {0, 3} on a line: move 1 -> 3 with mass 1/2
    assert metrics.wasserstein1([[0.0], [1.0]], [[0.0], [3.0]]) == pytest.approx(1.0)


def test_psnr_known_noise_level():
    rng = np.random.default_rng(3)
    truth = rng.uniform(0.2, 0.8, size=(10, 8, 8))
    signs = rng.choice([-1.0, 1.0], size=truth.shape)
    assert metrics.psnr(truth + 0.1 * signs, truth) == pytest.approx(20.0, abs=1e-9)  # MSE 0.01
    assert metrics.psnr(truth + 0.01 * signs, truth) == pytest.approx(40.0, abs=1e-9)


def test_ssim_known_values():
    rng = np.random.default_rng(4)
    img = rng.uniform(size=(5, 28, 28))
    assert metrics.ssim(img, img) == pytest.approx(1.0, abs=1e-12)
    # constant images: variances vanish, SSIM = luminance term (2ab + C1) / (a^2 + b^2 + C1)
    a, b, c1 = 0.3, 0.7, 0.01 ** 2
    got = metrics.ssim(np.full((2, 28, 28), a), np.full((2, 28, 28), b))
    assert got == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-9)
    # an 11x11 image has exactly one window: compare with the formula computed by hand
    x, y = rng.uniform(size=(11, 11)), rng.uniform(size=(11, 11))
    g = metrics._gaussian_window(11, 1.5)
    w = np.outer(g, g)
    mx, my = (w * x).sum(), (w * y).sum()
    vx, vy = (w * x * x).sum() - mx ** 2, (w * y * y).sum() - my ** 2
    cxy = (w * x * y).sum() - mx * my
    c2 = 0.03 ** 2
    want = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    assert metrics.ssim(x, y) == pytest.approx(want, rel=1e-9)
    # negatively correlated images score below independent ones
    assert metrics.ssim(img, 1 - img) < metrics.ssim(img, rng.uniform(size=img.shape)) < 0.5
    assert 0.9 < metrics.ssim(np.full((1, 8, 8), 0.5) + 0.001 * rng.normal(size=(1, 8, 8)), np.full((1, 8, 8), 0.5))


def test_consistency_error():
    from lsdm_fast.data import average_pool

    rng = np.random.default_rng(5)
    low = rng.uniform(size=(4, 7, 7))
    up = np.kron(low, np.ones((4, 4)))  # nearest upsampling pools back exactly
    assert metrics.consistency_error(up, low.reshape(4, -1), 4, (28, 28)) == pytest.approx(0, abs=1e-12)
    assert metrics.consistency_error(up + 0.25, low.reshape(4, -1), 4, (28, 28)) == pytest.approx(0.25)
    full = rng.uniform(size=(3, 28, 28))
    assert metrics.consistency_error(full, average_pool(full, 4).reshape(3, -1), 4, (28, 28)) == pytest.approx(0, abs=1e-12)


def test_prdc_identical_and_disjoint_sets():
    rng = np.random.default_rng(6)
    real = rng.normal(size=(300, 5))
    same = metrics.prdc(real, real.copy(), k=5)
    assert same["precision"] == 1 and same["recall"] == 1 and same["coverage"] == 1
    assert same["density"] == pytest.approx(1.0 + 0.0, abs=0.35)  # each point in its own ball and ~k neighbours'
    far = metrics.prdc(real, real + 100.0, k=5)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    # real = two far-apart clusters of equal size, fake = a copy of one of them: exactly half covered
    two = np.concatenate([real[:150], real[150:] + 100.0])
    half = metrics.prdc(two, two[:150] + 1e-9, k=5)
    assert half["precision"] == 1 and half["coverage"] == 0.5 and half["recall"] == 0.5


def test_train_nn_ratio_copies_and_fresh_draws():
    rng = np.random.default_rng(7)
    train, real, fresh = (rng.normal(size=(n, 6)) for n in (400, 400, 400))
    copies = train[rng.integers(0, 400, 400)] + 1e-6 * rng.normal(size=(400, 6))
    assert metrics.train_nn_ratio(train, copies, real) < 1e-4  # near-copies of the training set
    assert metrics.train_nn_ratio(train, fresh, real) == pytest.approx(1.0, abs=0.15)  # same law as the real points
    assert metrics.train_nn_ratio(train, fresh * 3.0, real) > 1.5  # too spread out: farther than real data
    with pytest.raises(ValueError, match="coincide"):
        metrics.train_nn_ratio(train, fresh, train)


def test_samples_per_second():
    assert metrics.samples_per_second(lambda: None, 1000) > 1e5


def test_feature_net_and_judge_cached_and_useful(tmp_path):
    torch.set_num_threads(1)  # tiny nets; much faster on a shared CPU (restored below)
    try:
        _feature_net_and_judge(tmp_path)
    finally:
        torch.set_num_threads(_THREADS)


_THREADS = torch.get_num_threads()


def _feature_net_and_judge(tmp_path):
    from lsdm_fast.data import load_dataset

    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    net = metrics.feature_net(train.images, train.labels, steps=150, cache_dir=str(tmp_path))
    files = list(tmp_path.iterdir())
    assert len(files) == 1
    again = metrics.feature_net(train.images, train.labels, steps=150, cache_dir=str(tmp_path))
    for p, q in zip(net.parameters(), again.parameters()):
        assert torch.equal(p, q)
    assert metrics.conditional_accuracy(net, test.images, test.labels) > 0.8
    judge = metrics.judge_net(train.images, train.labels, steps=300, cache_dir=str(tmp_path))
    assert len(list(tmp_path.iterdir())) == 2
    assert metrics.conditional_accuracy(judge, test.images, test.labels) > 0.8
    # FD: a set with itself is 0; real test digits are closer to real train digits than noise is
    assert metrics.classifier_fd(net, test.images, test.images) == pytest.approx(0, abs=1e-6)
    noise = np.random.default_rng(0).uniform(size=test.images.shape).astype(np.float32)
    assert metrics.classifier_fd(net, train.images, test.images) < metrics.classifier_fd(net, train.images, noise)
    # a different data set gets a different cache entry
    metrics.feature_net(train.images[:200], train.labels[:200], steps=5, cache_dir=str(tmp_path))
    assert len(list(tmp_path.iterdir())) == 3


def test_classifier_training_is_reproducible_and_leaves_the_global_rng_alone():
    from lsdm_fast.classifier import train_classifier
    from lsdm_fast.data import load_dataset

    train = load_dataset("digits", "train")
    y, lab = torch.from_numpy(train.images[:300]), torch.from_numpy(train.labels[:300])
    state = torch.random.get_rng_state()
    a = train_classifier(y, lab, 10, steps=10, batch_size=32, seed=3, progress=False)
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.rand(5)  # move the global generator: the dropout masks must not depend on it
    b = train_classifier(y, lab, 10, steps=10, batch_size=32, seed=3, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
