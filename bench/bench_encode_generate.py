"""Benchmarks (pytest-benchmark) for fused encoding and one-step generation (issues 6 and 11).

    pytest bench/bench_encode_generate.py --benchmark-only --benchmark-json=eg.json   # GPU: full sizes
    python bench/report.py eg.json --baseline eager-bf16
    OMP_NUM_THREADS=1 pytest bench/bench_encode_generate.py --benchmark-only -q       # CPU: smoke run

Models (issue 11's): generator 26->512->512->32 (16 noise + 10 classes), decoder 32->512->512->784
with a sigmoid, encoder 784->512->512->32, LeakyReLU(0.2).
Sizes: N = 2^16 and 2^20 rows on a GPU; 256 and 1024 on the CPU (or with LSDM_BENCH_SMALL=1), and
64 rows for Triton under the CPU interpreter (a correctness tool there, not a fast path);
LSDM_BENCH_ROWS=1048576 (comma-separated) picks the sizes.

Group "patch-model-generate-N" / "patch-model-encode-N" (the largest size): the patch autoencoder for 28 x 28
images at the package defaults (conv_design="patch", W 96, K 1, S 4, latent 32: the model users get; the
strided design has no GPU kernel of ours), built with random weights: eager-fp32 /
eager-bf16 (the modules themselves), cudagraph-bf16, compile-bf16; lsdm-B (LSDM.sample / LSDM.encode with
backend B, float32 weights at the default precision: the dense parts fused, the front / tail through the
modules); lsdm-B-bf16 and lsdm-triton-tf32 (ops.generate / ops.encode with bf16 weights, or float32 as TF32,
and the modules' front / tail: on Triton the whole chain in one fused kernel, issue 22 phase 2; bf16 images
out); extra_info peak_extra_gb.

Variants per op and size (group "generate-N" / "encode-N"), all in one process:
  eager-fp32       plain PyTorch, float32 weights and inputs (what a user writes)
  eager-bf16       the same with bfloat16 weights and inputs
  compile-bf16     torch.compile of eager-bf16 (CUDA; on CPU only with LSDM_BENCH_COMPILE=1)
  cudagraph-bf16   eager-bf16 captured once in a CUDA graph and replayed (CUDA only)
  lsdm-B-fp32 / lsdm-B-bf16   lsdm_fast.ops.encode / generate with backend B, for every backend
                   available on the device; lsdm-triton-tf32 too on CUDA (fp32 on TF32 tensor cores)
extra_info: rows, samples_per_s, tflops (2 * rows * sum(in * out) matmul FLOPs / mean time).

Group "sampler-one-step-vs-50-step" (2^16 rows on a GPU, 256 on the CPU): the same decoder and
latent size (32) behind two samplers:
  lsdm-one-step-eager / lsdm-one-step-B   y = D(G(eta, x)): generator + decoder once
  latent-diffusion-50-step                 z ~ N(0, I), then 50 deterministic DDIM steps of the
      conditional denoiser of lsdm_fast.baselines (Denoiser: cat(z, one-hot x, 64-wide time
      embedding) -> 512 -> 512 -> 512 -> 32, SiLU; the update rule of
      LatentDiffusion.sample_latent, on the device), then the decoder
Eager variants run under bfloat16 autocast on CUDA and in float32 on the CPU.
"""
from __future__ import annotations

import os

import pytest
import torch
from _graphs import cuda_graph  # bench/_graphs.py (TRITON_INTERPRET on a CPU: bench/conftest.py)
import torch.nn.functional as F

from lsdm_fast.baselines import Denoiser, cosine_alpha_bar
from lsdm_fast.ops import MLPParams, available_backends, encode, generate

# the Triton interpreter warns on every loop with a run-time bound
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim:DeprecationWarning")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CUDA = DEVICE.type == "cuda"
SMALL = os.environ.get("LSDM_BENCH_SMALL") == "1" or not CUDA
NOISE, CLASSES, LATENT = 16, 10, 32
GEN_W, DEC_W, ENC_W = [NOISE + CLASSES, 512, 512, LATENT], [LATENT, 512, 512, 784], [784, 512, 512, LATENT]
SIZES = [256, 1024] if SMALL else [2**16, 2**20]
if os.environ.get("LSDM_BENCH_ROWS"):  # e.g. 1048576 (bench/gpu_check.py): only these sizes
    SIZES = [int(v) for v in os.environ["LSDM_BENCH_ROWS"].split(",")]
SAMPLER_ROWS = 256 if SMALL else 2**16
DIFFUSION_STEPS, DIFFUSION_T = 50, 1000
INTERP_ROWS = 64
COMPILE = CUDA or os.environ.get("LSDM_BENCH_COMPILE") == "1"


def _mlp(widths, out_act=None, dtype=torch.float32) -> MLPParams:
    g = torch.Generator().manual_seed(sum(widths))
    ws = [(torch.randn(o, i, generator=g) / i**0.5).to(DEVICE, dtype) for i, o in zip(widths[:-1], widths[1:])]
    bs = [(torch.randn(o, generator=g) * 0.1).to(DEVICE, dtype) for o in widths[1:]]
    return MLPParams(ws, bs, "leaky_relu", 0.2, out_act)


def _flops(rows, *widths_lists) -> int:
    return 2 * rows * sum(a * b for w in widths_lists for a, b in zip(w[:-1], w[1:]))


def _sync():
    if CUDA:
        torch.cuda.synchronize()


def _run(benchmark, fn, rows, flops, group, quick=False):
    def call():
        r = fn()
        _sync()
        return r

    benchmark.group = group
    call()  # warm-up: compilation, weight packing, label check
    if quick or SMALL:
        benchmark.pedantic(call, rounds=1 if quick else 3, iterations=1)
    else:
        benchmark(call)
    mean = benchmark.stats.stats.mean
    benchmark.extra_info.update(device=torch.cuda.get_device_name() if CUDA else "cpu", torch=torch.__version__,
                                rows=rows, samples_per_s=rows / mean, tflops=flops / mean / 1e12)


def _eager_forward(p: MLPParams, u):
    n = len(p.weights)
    for l, (w, b) in enumerate(zip(p.weights, p.biases)):
        u = F.linear(u, w, b)
        if l < n - 1:
            u = F.leaky_relu(u, p.negative_slope)
    return torch.sigmoid(u) if p.output_activation == "sigmoid" else u


def _eager_generate(gen: MLPParams, dec: MLPParams, labels):
    dtype = gen.weights[0].dtype
    eta = torch.randn(labels.shape[0], NOISE, device=labels.device, dtype=dtype)
    x = F.one_hot(labels, CLASSES).to(dtype)
    return _eager_forward(dec, _eager_forward(gen, torch.cat([eta, x], 1)))


def _variants(op):
    out = ["eager-fp32", "eager-bf16", "compile-bf16", "cudagraph-bf16"]
    for b in available_backends(op, DEVICE):
        out += [f"lsdm-{b}-fp32"] + ([f"lsdm-{b}-bf16"] if b != "torch" else [])
        if b == "triton" and CUDA:
            out.append("lsdm-triton-tf32")
    return out


def _prepare(variant):
    """(dtype of weights and inputs, lsdm backend or None, quick) for a variant; skips what cannot run here."""
    if variant == "compile-bf16" and not COMPILE:
        pytest.skip("torch.compile runs on CUDA (on the CPU only with LSDM_BENCH_COMPILE=1)")
    if variant == "cudagraph-bf16" and not CUDA:
        pytest.skip("CUDA graphs need a GPU")
    dtype = torch.float32 if variant.endswith(("fp32", "tf32")) else torch.bfloat16
    backend = variant.split("-")[1] if variant.startswith("lsdm-") else None
    return dtype, backend, backend == "triton" and not CUDA


def _precision(variant):
    """The matmul precision an lsdm variant passes (None: the op's default, ieee for float32)."""
    return "tf32" if variant == "lsdm-triton-tf32" else None


def _wrap(variant, body):
    if variant == "compile-bf16":
        return torch.compile(body)
    if variant == "cudagraph-bf16":
        return cuda_graph(body, warmup=2)
    return body


@pytest.mark.parametrize("rows", SIZES)
@pytest.mark.parametrize("variant", _variants("generate"))
@torch.no_grad()
def test_bench_generate(benchmark, rows, variant):
    dtype, backend, quick = _prepare(variant)
    rows = min(rows, INTERP_ROWS) if quick else rows
    gen, dec = _mlp(GEN_W, dtype=dtype), _mlp(DEC_W, "sigmoid", dtype=dtype)
    labels = torch.randint(0, CLASSES, (rows,), device=DEVICE)
    if backend is not None:
        fn = lambda: generate(gen, dec, labels, noise_dim=NOISE, num_classes=CLASSES, seed=1,
                              out_dtype=dtype, backend=backend, precision=_precision(variant))
    else:
        fn = _wrap(variant, lambda: _eager_generate(gen, dec, labels))
    _run(benchmark, fn, rows, _flops(rows, GEN_W, DEC_W), f"generate-{rows}", quick)


@pytest.mark.parametrize("rows", SIZES)
@pytest.mark.parametrize("variant", _variants("encode"))
@torch.no_grad()
def test_bench_encode(benchmark, rows, variant):
    dtype, backend, quick = _prepare(variant)
    rows = min(rows, INTERP_ROWS) if quick else rows
    enc = _mlp(ENC_W, dtype=dtype)
    y = torch.rand(rows, 784, device=DEVICE, dtype=dtype)
    if backend is not None:
        fn = lambda: encode(enc, y, backend=backend, precision=_precision(variant))
    else:
        fn = _wrap(variant, lambda: _eager_forward(enc, y))
    _run(benchmark, fn, rows, _flops(rows, ENC_W), f"encode-{rows}", quick)


# ------------------------------------------------------------------ one step vs latent diffusion

def _autocast():
    return torch.autocast("cuda", dtype=torch.bfloat16) if CUDA else torch.autocast("cpu", enabled=False)


def _diffusion_sampler(dec: MLPParams, labels):
    """50 DDIM steps (eta = 0) of a conditional latent denoiser, then the decoder; and the
    denoiser's layer widths."""
    torch.manual_seed(0)
    den = Denoiser(LATENT, CLASSES, (512, 512, 512)).to(DEVICE).eval()
    widths = [m.in_features for m in den.net if isinstance(m, torch.nn.Linear)] + [LATENT]
    ts = torch.linspace(DIFFUSION_T, 0, DIFFUSION_STEPS + 1).round().long().tolist()
    alpha_bar = cosine_alpha_bar(torch.arange(DIFFUSION_T + 1, dtype=torch.float64) / DIFFUSION_T).clamp(1e-5, 1.0)
    # per step: the time embedding (the same for every row) and the DDIM coefficients, computed once
    steps = []
    for t_now, t_next in zip(ts[:-1], ts[1:]):
        ab, ab_next = float(alpha_bar[t_now]), float(alpha_bar[t_next])
        emb = den.embed(torch.full((1,), t_now / DIFFUSION_T)).to(DEVICE)
        steps.append((emb, ab**0.5, (1 - ab) ** 0.5, ab_next**0.5, (1 - ab_next) ** 0.5, t_next > 0))
    x = F.one_hot(labels, CLASSES).float()

    def sample():
        with _autocast():
            z = torch.randn(labels.shape[0], LATENT, device=DEVICE)
            for emb, s, c, s_next, c_next, more in steps:
                v = den.net(torch.cat([z, x, emb.expand(z.shape[0], -1)], 1)).float()
                z0 = (s * z - c * v).clamp(-8, 8)
                z = s_next * z0 + c_next * (c * z + s * v) if more else z0
            return _eager_forward(dec, z)
    return sample, widths


def _sampler_backend():
    for b in ("triton", "cuda"):
        if CUDA and b in available_backends("generate", DEVICE):
            return b
    return "torch"


SAMPLERS = ["lsdm-one-step-eager", f"lsdm-one-step-{_sampler_backend()}", f"latent-diffusion-{DIFFUSION_STEPS}-step"]


@pytest.mark.parametrize("variant", SAMPLERS)
@torch.no_grad()
def test_bench_one_step_vs_50_step(benchmark, variant):
    rows = SAMPLER_ROWS
    gen, dec = _mlp(GEN_W), _mlp(DEC_W, "sigmoid")
    labels = torch.randint(0, CLASSES, (rows,), device=DEVICE)
    if variant == "lsdm-one-step-eager":
        def fn():
            with _autocast():
                return _eager_generate(gen, dec, labels)
        flops = _flops(rows, GEN_W, DEC_W)
    elif variant.startswith("lsdm-one-step-"):
        backend = variant.rsplit("-", 1)[1]
        if CUDA and backend != "torch":
            gen, dec = _mlp(GEN_W, dtype=torch.bfloat16), _mlp(DEC_W, "sigmoid", dtype=torch.bfloat16)
        fn = lambda: generate(gen, dec, labels, noise_dim=NOISE, num_classes=CLASSES, seed=1,
                              out_dtype=gen.weights[0].dtype, backend=backend)
        flops = _flops(rows, GEN_W, DEC_W)
    else:
        fn, den_w = _diffusion_sampler(dec, labels)
        flops = DIFFUSION_STEPS * _flops(rows, den_w) + _flops(rows, DEC_W)
    benchmark.extra_info["latent_dim"] = LATENT
    _run(benchmark, fn, rows, flops, "sampler-one-step-vs-50-step")


# ------------------------------------------------------------------ the package's default (conv) autoencoder

def _default_model(conv_design: str | None = None, patch_width: int | None = None):
    """An LSDM built (not trained) with the package defaults for 28 x 28 grey images and 10 labels: the
    autoencoder kind="auto" picks, its encode / sample paths (the fused entry points with the convolutional
    front / tail), random weights; `conv_design` overrides the default design ("strided" / "patch")."""
    from lsdm_fast import LSDM, LSDMConfig

    torch.manual_seed(0)
    config = LSDMConfig(device=DEVICE.type)
    if conv_design is not None:
        config.autoencoder.conv_design = conv_design
    if patch_width is not None:
        config.autoencoder.patch_width = patch_width
    model = LSDM(config)
    model._build(784, CLASSES, (28, 28))
    model.meta.update(cond_kind="onehot", num_classes=CLASSES, cond_dim=CLASSES, data_dim=784, image_shape=(28, 28))
    for m in model.modules():
        m.eval()
    return model


def _conv_variants():
    # ours first, then the competitors: on an H200 (2026-12-04) the CUDA graph of the eager bf16 model at 2^20
    # rows hit an illegal memory access, which poisons the process's CUDA context for every later case
    out = ["lsdm-auto"]  # what LSDM.sample / LSDM.encode run by default (float32 weights)
    for b in available_backends("generate", DEVICE):
        out.append(f"lsdm-{b}")
        if b != "torch":
            out.append(f"lsdm-{b}-bf16")
        if b == "triton" and CUDA:
            out.append("lsdm-triton-tf32")
    return out + ["eager-fp32", "eager-bf16", "cudagraph-bf16", "compile-bf16"]


def _peak_extra_gb(fn) -> float | None:
    """Device memory one call takes beyond what was allocated before it (GB); None off CUDA."""
    if not CUDA:
        return None
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak / 1e9


def _conv_case(variant, op, rows):
    """The callable of one variant of the default model's generate / encode (conv_design="patch" at the package's
    default width, W 96, as ops/roofline.py's "W 96" rows estimate; the strided design has no kernel of ours on a
    GPU): eager (the modules, wrapped in a
    CUDA graph or torch.compile), lsdm-B (LSDM.sample / LSDM.encode: float32 weights, the backend's default
    precision), lsdm-B-bf16 / lsdm-triton-tf32 (ops.generate / ops.encode with the modules' front / tail in
    bf16, or float32 as TF32: on the Triton backend the fused patch kernels, encode_generate_triton_patch.py)."""
    import copy

    model = _default_model("patch")  # the package default (W 96): the model users get
    labels = torch.randint(0, CLASSES, (rows,), device=DEVICE)
    y = torch.rand(rows, 784, device=DEVICE)
    if variant.startswith("lsdm-"):
        _, backend, *kind = variant.split("-")
        if not kind:
            if op == "generate":
                return lambda: model.sample(labels, seed=1, backend=backend)
            return lambda: model.encode(y, backend=backend, batch_size=rows)
        dtype, precision = (torch.bfloat16, None) if kind == ["bf16"] else (torch.float32, "tf32")
        enc, dec = (copy.deepcopy(m).to(dtype) for m in (model.encoder, model.decoder))
        gen = model._generator_params()
        gen = gen._replace(weights=[w.to(dtype) for w in gen.weights], biases=[b.to(dtype) for b in gen.biases])
        yd = y.to(dtype)
        if op == "generate":
            return lambda: generate(gen, dec.dense(), labels, noise_dim=model.generator.noise_dim,
                                    num_classes=CLASSES, seed=1, out_dtype=dtype, tail=dec.tail, backend=backend,
                                    precision=precision)
        return lambda: encode(enc.dense(), yd, front=enc.front, backend=backend, precision=precision)
    dtype = torch.float32 if variant == "eager-fp32" else torch.bfloat16
    enc, dec, gen = (copy.deepcopy(m).to(dtype) for m in (model.encoder, model.decoder, model.generator))
    x = F.one_hot(labels, CLASSES).to(dtype)
    yd = y.to(dtype)

    def body():
        if op == "generate":
            eta = torch.randn(rows, gen.noise_dim, device=DEVICE, dtype=dtype)
            return dec(gen(eta, x))
        return enc(yd)
    return _wrap(variant, body)


@pytest.mark.parametrize("rows", SIZES[-1:])
@pytest.mark.parametrize("op", ["generate", "encode"])
@pytest.mark.parametrize("variant", _conv_variants())
@torch.no_grad()
def test_bench_patch_model(benchmark, variant, op, rows):
    """The patch autoencoder (a conv one for MNIST-shaped images; _conv_case): one-step generation
    (generator + decoder) and encoding of `rows` images; extra_info peak_extra_gb: device memory
    one call takes beyond the model and inputs."""
    if variant == "compile-bf16" and not COMPILE:
        pytest.skip("torch.compile runs on CUDA (on the CPU only with LSDM_BENCH_COMPILE=1)")
    if variant == "cudagraph-bf16" and not CUDA:
        pytest.skip("CUDA graphs need a GPU")
    quick = variant.startswith("lsdm-triton") and not CUDA
    rows = min(rows, INTERP_ROWS) if quick else rows
    try:
        fn = _conv_case(variant, op, rows)
        peak = _peak_extra_gb(fn)
    except Exception as exc:  # noqa: BLE001 - a competitor that cannot run here is reported, not fatal
        pytest.skip(f"{variant} {op} unavailable: {type(exc).__name__}: {exc}")
    benchmark.extra_info.update(peak_extra_gb=peak, model="patch W 96 (the default)")
    _run(benchmark, fn, rows, 0, f"patch-model-{op}-{rows}", quick)


CPU_DEFAULT_ROWS = 4096


@pytest.mark.skipif(CUDA, reason="the CPU case (one thread: OMP_NUM_THREADS=1)")
@pytest.mark.parametrize("design", ["strided", "patch"])
@pytest.mark.parametrize("op", ["generate", "encode"])
@pytest.mark.parametrize("backend", [b for b in ("torch", "cpp") if b in available_backends("generate", "cpu")])
@torch.no_grad()
def test_bench_default_model_cpu(benchmark, backend, op, design):
    """Group "<design>-model-cpu-<op>": the strided or patch (default) model (MNIST 28 x 28, random weights) on the
    CPU through LSDM.sample / LSDM.encode, float32: "torch" runs the generator and the decoder's head, then the
    module's tail (eager); "cpp" fuses the head and tail (encode: the front and the dense layer) in C++ a few
    images at a time (ops/encode_generate_cpp.py). extra_info images_per_s; issue 24's target for generate:
    >= 30,000 images/s on one thread."""
    model = _default_model(design)
    rows = CPU_DEFAULT_ROWS
    if op == "generate":
        labels = torch.arange(rows) % CLASSES
        fn = lambda: model.sample(labels, seed=1, backend=backend)  # noqa: E731
    else:
        y = torch.rand(rows, 784)
        fn = lambda: model.encode(y, backend=backend, batch_size=rows)  # noqa: E731
    _run(benchmark, fn, rows, 0, f"{design}-model-cpu-{op}")
    benchmark.extra_info.update(images_per_s=benchmark.extra_info["samples_per_s"], threads=torch.get_num_threads())
