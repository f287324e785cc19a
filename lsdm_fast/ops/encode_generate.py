"""Latent encoding z = E(y) and one-step generation y = D(G(eta, x)).

Public entry points (backend="auto" | "torch" | "cpp" | "triton" | "cuda"; "cpp" fuses only a PatchDecoder's
tail / PatchEncoder's front in float32 / float64 (encode_generate_cpp.py) and runs the torch reference for
every other call):

- encode(encoder, y, ...): fused MLP forward over a whole data set, chunked.
- generate(generator, decoder, cond, ...): eta ~ N(0, I) drawn from counter-based Philox
  (lsdm_fast.ops.philox, identical to Triton's tl.randn) unless `eta` is given; generator
  input is cat(eta, x); x is a one-hot built from integer labels, or a float condition tensor.
- validate_labels(labels, num_classes): the one label-range check (see below).

Convolutional autoencoders keep the same entry points: `encode(encoder, y, front=...)` runs
`front` (the encoder's convolutions, plain torch, so cuDNN on a GPU) and then the dense `encoder`
(fused in the backend kernels); `generate(generator, decoder, cond, tail=...)` runs the generator
and the decoder's dense head fused, then `tail` (the decoder's transposed convolutions) on their
output, in pieces of chunk_rows(device, conv=True) rows. The exception is the patch
autoencoder: when `front` / `tail` is the bound method of a models.PatchEncoder / PatchDecoder
(ops.patch.patch_front / patch_tail recognise it; a subclass that overrides it is not recognised),
the entry point checks it against the dense part and the input (below), and a backend that
registered `fuses` and accepts this problem (_registry.fuses) is handed it as `front=` / `tail=`, a
PatchPart, and computes the whole chain itself, in pieces of the MLP's chunk_rows (it allocates
nothing per row). Every other backend gets the dense part only, as for any front / tail; the
entry point then runs the module's front / tail in the module's own dtype.

MLPs are described by MLPParams. Outputs are float32 unless `out_dtype` says otherwise
(torch.uint8 maps [0, 1] to 0..255: round(clamp(y, 0, 1) * 255) computed in float32 (float64
for float64 weights) and rounded half to even, as torch.round; every backend follows this rule).

Contract between the entry points and the backends
--------------------------------------------------
The entry points validate every argument once, before dispatch, so that a bad call gets the
same exception type and message whatever the backend (TypeError for a wrong type, ValueError
for a wrong value, shape, dtype or device). None of these checks reads a CUDA tensor's values
on the host, except the label range (below).

encode(encoder, y, *, batch_size, backend) checks:
  - encoder: check_mlp; floating weights and biases, all on y's device;
  - y: a 2-D floating tensor (N, encoder.in_features), N >= 0 (float16, bfloat16, float32, float64);
  - batch_size: None or an int >= 1.
generate(generator, decoder, cond, *, noise_dim, num_classes, seed, offset, eta, out_dtype,
backend) checks:
  - generator, decoder: check_mlp; floating weights and biases on cond's device;
    generator.out_features == decoder.in_features;
  - noise_dim: an int >= 0;
  - cond: integer labels (N,) of a dtype in LABEL_DTYPES with num_classes an int >= 1, every
    label in [0, num_classes) (validate_labels); or a 2-D floating tensor (N, cond_dim);
    noise_dim + (num_classes or cond_dim) == generator.in_features;
  - eta: None, or a floating tensor (N, noise_dim) on cond's device;
  - seed: an int in [0, 2^64); offset: an int >= 0 with (offset + N) * noise_dim < 2^63 (the
    int64 Philox counter of the last element);
  - out_dtype: one of OUT_DTYPES.
Both take `precision`: None or one of _backend_util.PRECISIONS, handed on only to a backend whose
function takes a `precision` keyword (_registry.precision_kwargs).
With a patch front (encode): encoder as above; encoder.in_features == low * low * W of the front;
y floating, (N, ...) with C * side * side values per row (flat or (N, C, side, side)); the front's
parameters floating and on y's device. With a patch tail (generate): decoder.out_features ==
low * low * W of the tail; its parameters floating and on cond's device.
A backend's function (registered under "encode" / "generate") may assume all of the above and
must not check again. It receives the tensors as given (any strides, any of the dtypes above),
batch_size, noise_dim, seed and offset as Python ints (batch_size may be None), and returns a
new tensor on the input's device: encode (N, encoder.out_features) float32 (float64 when the
weights are float64); generate (N, decoder.out_features) of out_dtype, or, given `tail=part`,
(N, part.pixels) of out_dtype: the images, sigmoid and uint8 rule included (with `front=part`,
encode's y arrives flat, (N, part.pixels)). It must:
  - not read a device value on the host (no .item(), int(t), .tolist(), .cpu() of data, no
    data-dependent Python branch), so that a call never synchronises and can be captured in a
    CUDA graph after one warm-up call;
  - keep anything derived from weights (packed, converted, padded copies) in a
    lsdm_fast.ops._weight_cache.DerivedCache (identity + version, held weakly), never keyed on
    data_ptr;
  - not fault on labels outside [0, num_classes) (build the one-hot by comparison, never by
    indexing: such a row gets a zero one-hot);
  - draw eta as lsdm_fast.ops.philox.philox_normal(seed, offset, N, noise_dim) does;
  - produce uint8 as rint(min(max(float32(y * 255), 0), 255)), ties to even (no fused
    multiply-add into the rounding);
  - return an empty tensor for N = 0 without launching anything.
float64 work may be delegated to the reference functions below. backend="auto" takes the
first available of _registry.AUTO_ORDER for the device: on the CPU that is "cpp" when the
extension is built (the fused patch tail / front, the torch reference for the rest), so any
floating dtype works there.

Labels. validate_labels raises ValueError("labels must be in [0, C), got range [lo, hi]").
CPU labels are checked on every call (host memory: no transfer). CUDA labels cost one
device-to-host read the first time a tensor is seen; the observed range is then cached on the
tensor (or the tensor it is a view of) while its version counter is unchanged, held weakly
(DerivedCache), so repeated calls, and slices of a tensor checked once (generate_chunked), read
nothing. Inside CUDA-graph capture an unchecked label tensor is refused with a RuntimeError
that says to call validate_labels(labels, num_classes) before capturing.
"""
from __future__ import annotations

import operator
import os

import torch

from ._backend_util import PRECISION_ENV
from ._registry import fuses, precision_kwargs, register, resolve
from ._weight_cache import DerivedCache
from .mlp import MLPParams, check_mlp, mlp_forward_reference
from .patch import PatchPart, patch_front, patch_tail
from .philox import philox_normal

OUT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.uint8)
LABEL_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8)
_MAX_COUNTER = 2**63  # Philox counters are computed in int64


# ---------------------------------------------------------------- validation (one home)

def _int(name: str, value, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    value = operator.index(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_params(p: MLPParams, name: str, device: torch.device) -> None:
    check_mlp(p, name)
    for l, (w, b) in enumerate(zip(p.weights, p.biases)):
        for what, t in (("weight", w), ("bias", b)):
            if not t.dtype.is_floating_point:
                raise ValueError(f"{name}: layer {l} {what} must be floating point, got {t.dtype}")
            if t.device != device:
                raise ValueError(f"{name}: layer {l} {what} is on {t.device} but the input is on {device}")


def _check_tensor(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def _observed_range(t: torch.Tensor) -> tuple[int, int]:
    lo, hi = torch.aminmax(t)
    return tuple(torch.stack([lo.long(), hi.long()]).tolist())  # one transfer


def _observed_range_outside_capture(t: torch.Tensor) -> tuple[int, int]:
    if t.is_cuda and torch.cuda.is_current_stream_capturing():
        raise RuntimeError("labels on CUDA must be checked before CUDA-graph capture: call "
                           "lsdm_fast.ops.encode_generate.validate_labels(labels, num_classes) "
                           "on them (or on the tensor they are a view of) before capturing")
    return _observed_range(t)


_LABEL_RANGES = DerivedCache(maxsize=64)


def _label_range(labels: torch.Tensor, num_classes: int, cache: bool) -> tuple[int, int]:
    """(min, max) of labels; with `cache`, read once per version of the tensor labels views (or of
    labels itself) and shared by all its views."""
    if not cache:
        return _observed_range(labels)
    base = labels._base
    root = base if base is not None and base.dtype == labels.dtype else labels
    if root.is_inference():  # no version counter to key a cache on
        return _observed_range(labels)
    lo, hi = _LABEL_RANGES.get([root], "range", lambda: _observed_range_outside_capture(root))
    if (lo < 0 or hi >= num_classes) and root is not labels:
        return _observed_range(labels)  # the view may be valid where the tensor it views is not
    return lo, hi


def validate_labels(labels: torch.Tensor, num_classes: int) -> None:
    """Raise ValueError unless every label is in [0, num_classes); see the module docstring."""
    num_classes = _int("num_classes", num_classes, 1)
    if labels.numel() == 0:
        return
    lo, hi = _label_range(labels, num_classes, cache=labels.device.type != "cpu")
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"labels must be in [0, {num_classes}), got range [{lo}, {hi}]")


def _check_encode(encoder: MLPParams, y, batch_size) -> None:
    _check_tensor("y", y)
    _check_params(encoder, "encoder", y.device)
    if y.dim() != 2 or y.shape[1] != encoder.in_features:
        raise ValueError(f"encode: y must be (N, {encoder.in_features}), got shape {tuple(y.shape)}")
    if not y.dtype.is_floating_point:
        raise ValueError(f"encode: y must be floating point, got {y.dtype}")
    if batch_size is not None:
        _int("batch_size", batch_size, 1)


def _check_generate(generator, decoder, cond, noise_dim, num_classes, seed, offset, eta, out_dtype):
    _check_tensor("cond", cond)
    _check_params(generator, "generator", cond.device)
    _check_params(decoder, "decoder", cond.device)
    if generator.out_features != decoder.in_features:
        raise ValueError(f"generator gives {generator.out_features} latents, decoder takes {decoder.in_features}")
    noise_dim = _int("noise_dim", noise_dim, 0)
    if cond.dtype in LABEL_DTYPES:
        if cond.dim() != 1:
            raise ValueError(f"labels must be 1-D (N,), got shape {tuple(cond.shape)}")
        if num_classes is None:
            raise ValueError("integer labels given but num_classes is None")
        cond_dim = _int("num_classes", num_classes, 1)
    elif cond.dtype.is_floating_point:
        if cond.dim() != 2:
            raise ValueError(f"a condition tensor must be 2-D (N, cond_dim), got shape {tuple(cond.shape)}")
        cond_dim = int(cond.shape[1])
    else:
        raise ValueError(f"cond must be integer labels ({', '.join(str(d) for d in LABEL_DTYPES)}) or a floating "
                         f"condition tensor, got {cond.dtype}")
    if noise_dim + cond_dim != generator.in_features:
        raise ValueError(f"generator takes {generator.in_features} inputs but noise_dim ({noise_dim}) + "
                         f"condition ({cond_dim}) give {noise_dim + cond_dim}")
    n = int(cond.shape[0])
    if eta is not None:
        _check_tensor("eta", eta)
        if eta.dim() != 2 or tuple(eta.shape) != (n, noise_dim):
            raise ValueError(f"eta must be ({n}, {noise_dim}), got shape {tuple(eta.shape)}")
        if not eta.dtype.is_floating_point:
            raise ValueError(f"eta must be floating point, got {eta.dtype}")
        if eta.device != cond.device:
            raise ValueError(f"eta is on {eta.device} but cond is on {cond.device}")
    seed = _int("seed", seed)
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2^64), got {seed}")
    offset = _int("offset", offset, 0)
    if (offset + n) * noise_dim >= _MAX_COUNTER:
        raise ValueError(f"offset {offset} + {n} rows times noise_dim {noise_dim} reaches 2^63: "
                         "the Philox counter would overflow")
    if out_dtype not in OUT_DTYPES:
        raise ValueError(f"out_dtype must be one of {OUT_DTYPES}, got {out_dtype}")
    if cond.dtype in LABEL_DTYPES:
        validate_labels(cond, cond_dim)
    return noise_dim, seed, offset


# ---------------------------------------------------------------- entry points

# Rows per piece when the entry points split a batch: the pieces' activations, not N, set the peak memory.
# A conv front/tail run through its module holds ~10-30 KB of activations per row, the fused MLPs a few
# widths' worth; a patch front/tail fused into the backend's kernel (issue 22 phase 2) nothing per row, so it
# takes the MLP's pieces (one launch for 2^20 rows on CUDA: ~52 MB of scratch beyond the result).
CHUNK_ROWS = {"conv": {"cpu": 4096, "cuda": 65536}, "mlp": {"cpu": 65536, "cuda": 1 << 20}}


def _auto_problem(mlp: MLPParams, precision: str | None) -> dict:
    """What "auto" weighs for encode / generate: the weights' dtype and the float32 matmul precision asked for
    (the argument, else $LSDM_MATMUL_PRECISION or a backend's former variable, else "ieee")."""
    if precision is None:
        precision = next((os.environ[v] for v in (PRECISION_ENV, "LSDM_TRITON_FP32_PRECISION",
                                                   "LSDM_CUDA_FP32_PRECISION") if os.environ.get(v)), "ieee")
    return {"dtype": mlp.weights[0].dtype, "precision": precision}


def fp32_ieee_is_slower(problem: dict) -> str | None:
    """The GPU backends' auto_skip for encode / generate: float32 at "ieee" runs their kernels on the FMA units,
    measured slower than eager PyTorch (cuBLAS) on an H200 at 2^20 rows (bench/RESULTS.md, 2026-12-04): generate
    240 vs 51 ms (MLP model) and 242 vs 154 ms (the default patch model), encode 166 vs 31 ms and 209 vs 148 ms."""
    if problem.get("dtype") == torch.float32 and problem.get("precision") == "ieee":
        return "float32 at 'ieee': eager PyTorch (cuBLAS) was measured faster"
    return None


def chunk_rows(device: torch.device, conv: bool) -> int:
    """Rows per piece for encode/generate on `device` (conv: with a front or tail)."""
    table = CHUNK_ROWS["conv" if conv else "mlp"]
    return table.get(device.type, table["cpu"])


def _check_patch(part: PatchPart, dense: MLPParams, device: torch.device) -> None:
    """A patch front / tail (ops/patch.py) and the dense MLP it joins: one home for the checks, so that every
    backend, fused or not, refuses a mismatch the same way before anything runs."""
    if part.kind == "front" and dense.in_features != part.features:
        raise ValueError(f"the encoder's dense part takes {dense.in_features} features but its front gives "
                         f"{part.features} ({part.low} x {part.low} positions x width {part.width})")
    if part.kind == "tail" and dense.out_features != part.features:
        raise ValueError(f"the decoder's dense part gives {dense.out_features} features but its tail takes "
                         f"{part.features} ({part.low} x {part.low} positions x width {part.width})")
    for i, t in enumerate(part.tensors()):
        if t.device != device:
            raise ValueError(f"the {part.kind}'s parameter {i} ({tuple(t.shape)}) is on {t.device} but the input "
                             f"is on {device}")
        if not t.dtype.is_floating_point:
            raise ValueError(f"the {part.kind}'s parameter {i} ({tuple(t.shape)}) must be floating point, "
                             f"got {t.dtype}")


def encode(encoder: MLPParams, y: torch.Tensor, *, batch_size: int | None = None, front=None,
           backend: str = "auto", precision: str | None = None) -> torch.Tensor:
    """encoder(y) without autograd, accumulating in float32 (float64 stays float64). With `front` (a module
    or function, e.g. a ConvEncoder's `front`): encoder(front(y)); a PatchEncoder's `front` runs fused with
    `encoder` in backends that register `fuses` (module docstring).

    The rows go through `batch_size` at a time (None: chunk_rows for the device), so the peak memory
    beyond the (N, out_features) result does not grow with N. `precision`: the float32 matmul precision of
    the GPU backends (docs/design.md §4, "Precision"; None: $LSDM_MATMUL_PRECISION, else "ieee")."""
    _check_tensor("y", y)
    if batch_size is not None:
        batch_size = _int("batch_size", batch_size, 1)
    part = None if front is None else patch_front(front)
    if part is not None:
        _check_params(encoder, "encoder", y.device)
        _check_patch(part, encoder, y.device)
        if y.dim() < 2 or y.shape[1:].numel() != part.pixels:
            raise ValueError(f"encode: y must be (N, {part.pixels}) images ({part.channels} x {part.side} x "
                             f"{part.side}, flat or not), got shape {tuple(y.shape)}")
        if not y.dtype.is_floating_point:
            raise ValueError(f"encode: y must be floating point, got {y.dtype}")
        name, fn = resolve("encode", backend, y.device, _auto_problem(encoder, precision))
        if fuses("encode", name, part, (encoder,), precision):
            flat = y.reshape(len(y), part.pixels)
            kw = {**precision_kwargs("encode", name, precision), "front": part}
            return _in_pieces(len(flat), batch_size or chunk_rows(y.device, False),
                              lambda a, b: fn(encoder, flat[a:b], batch_size=None, **kw))
    if front is None:
        _check_encode(encoder, y, batch_size)
        name, fn = resolve("encode", backend, y.device, _auto_problem(encoder, precision))
        kw = precision_kwargs("encode", name, precision)
        return _in_pieces(len(y), batch_size or chunk_rows(y.device, False),
                          lambda a, b: fn(encoder, y[a:b], batch_size=None, **kw))
    if y.dim() < 1:
        raise ValueError(f"encode: y must be a batch of rows, got a {y.dim()}-D tensor")

    def piece(a, b):
        with torch.no_grad():  # a patch front reads the images in its own dtype
            h = front(y[a:b] if part is None else y[a:b].to(part.dtype))
        _check_encode(encoder, h, None)
        name, fn = resolve("encode", backend, h.device, _auto_problem(encoder, precision))
        return fn(encoder, h, batch_size=None, **precision_kwargs("encode", name, precision))

    return _in_pieces(len(y), batch_size or chunk_rows(y.device, True), piece, empty=lambda: piece(0, 0))


def _in_pieces(n: int, step: int, piece, empty=None) -> torch.Tensor:
    """piece(a, b) for consecutive row ranges of at most `step` rows, written into one result tensor."""
    if n <= step:
        return piece(0, n) if (n or empty is None) else empty()
    out = None
    for a in range(0, n, step):
        b = min(a + step, n)
        part = piece(a, b)
        if out is None:
            out = torch.empty((n, *part.shape[1:]), dtype=part.dtype, device=part.device)
        out[a:b] = part
    return out


def generate(generator: MLPParams, decoder: MLPParams, cond: torch.Tensor, *, noise_dim: int,
             num_classes: int | None = None, seed: int = 0, offset: int = 0,
             eta: torch.Tensor | None = None, out_dtype: torch.dtype = torch.float32, tail=None,
             backend: str = "auto", precision: str | None = None, batch_size: int | None = None) -> torch.Tensor:
    """y = decoder(generator(cat(eta, x))) for each row of `cond`; with `tail` (a module or function, e.g. a
    ConvDecoder's `tail`), y = tail(decoder(generator(...))), out_dtype applied after the tail; a
    PatchDecoder's `tail` runs fused with the generator and `decoder` in backends that register `fuses`
    (module docstring).

    Row i uses noise row `offset + i` of the stream `seed`, so a batch split into pieces with
    matching offsets gives the same samples as the whole batch; this call itself runs `batch_size`
    rows at a time (None: chunk_rows for the device), so its peak memory beyond the result does not
    grow with N. `precision`: as encode's.
    """
    noise_dim, seed, offset = _check_generate(generator, decoder, cond, noise_dim, num_classes, seed, offset, eta,
                                              out_dtype)
    if batch_size is not None:
        batch_size = _int("batch_size", batch_size, 1)
    part = None if tail is None else patch_tail(tail)
    if part is not None:
        _check_patch(part, decoder, cond.device)
    name, fn = resolve("generate", backend, cond.device, _auto_problem(generator, precision))
    kw = precision_kwargs("generate", name, precision)
    fused = part is not None and fuses("generate", name, part, (generator, decoder), precision)
    work = out_dtype
    if fused:
        kw["tail"] = part
    elif tail is not None:
        work = torch.float64 if decoder.weights[0].dtype == torch.float64 else torch.float32

    def piece(a, b):
        h = fn(generator, decoder, cond[a:b], noise_dim=noise_dim, num_classes=num_classes, seed=seed,
               offset=offset + a, eta=None if eta is None else eta[a:b], out_dtype=work, **kw)
        if tail is None or fused:
            return h
        with torch.no_grad():  # a patch tail in its own dtype (a bf16 decoder after a float32 dense result)
            return to_out_dtype(tail(h if part is None else h.to(part.dtype)), out_dtype)

    step = batch_size or chunk_rows(cond.device, tail is not None and not fused)
    return _in_pieces(int(cond.shape[0]), step, piece)


def _one_hot(labels: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    # by comparison: no device assert, no sync; an out-of-range label gives a zero row
    return (labels.long()[:, None] == torch.arange(num_classes, device=labels.device)).to(dtype)


def condition_tensor(cond: torch.Tensor, num_classes: int | None, dtype: torch.dtype) -> torch.Tensor:
    """Labels -> one-hot (checked with validate_labels); float conditions pass through."""
    if not cond.dtype.is_floating_point:
        if num_classes is None:
            raise ValueError("integer labels given but num_classes is None")
        if cond.dim() != 1:
            raise ValueError(f"labels must be 1-D, got shape {tuple(cond.shape)}")
        validate_labels(cond, num_classes)
        return _one_hot(cond, num_classes, dtype)
    if cond.dim() != 2:
        raise ValueError(f"condition tensor must be 2-D (N, cond_dim), got {tuple(cond.shape)}")
    return cond.to(dtype)


def to_out_dtype(y: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    if out_dtype == torch.uint8:
        return torch.round(y.clamp(0, 1) * 255).to(torch.uint8)
    return y.to(out_dtype)


# ---------------------------------------------------------------- reference (pure PyTorch)

def _as_float(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


@register("encode", "torch")
@torch.no_grad()
def encode_torch(encoder, y, *, batch_size=None):
    p = encoder._replace(weights=[_as_float(w) for w in encoder.weights],
                         biases=[_as_float(b) for b in encoder.biases])
    y32 = _as_float(y)
    if batch_size is None or batch_size >= y.shape[0]:
        return mlp_forward_reference(p, y32.to(p.weights[0].dtype))
    return torch.cat([mlp_forward_reference(p, y32[i:i + batch_size].to(p.weights[0].dtype))
                      for i in range(0, y.shape[0], batch_size)])


@torch.no_grad()
def generator_output_torch(generator, cond, *, noise_dim, num_classes, seed, offset, eta) -> torch.Tensor:
    """z = generator(cat(eta, x)) as the reference computes it (its noise, its one-hot), in the generator's dtype
    (float32 unless float64): what generate_torch feeds the decoder, and a backend that fuses only the decoder."""
    dtype = generator.weights[0].dtype if generator.weights[0].dtype in (torch.float32, torch.float64) else torch.float32
    x = _one_hot(cond, num_classes, dtype) if cond.dtype in LABEL_DTYPES else cond.to(dtype)
    if eta is None:
        eta = philox_normal(seed, offset, cond.shape[0], noise_dim, device=cond.device, dtype=dtype)
    g = generator._replace(weights=[w.to(dtype) for w in generator.weights], biases=[b.to(dtype) for b in generator.biases])
    return mlp_forward_reference(g, torch.cat([eta.to(dtype), x], 1))


@register("generate", "torch")
@torch.no_grad()
def generate_torch(generator, decoder, cond, *, noise_dim, num_classes, seed, offset, eta, out_dtype):
    z = generator_output_torch(generator, cond, noise_dim=noise_dim, num_classes=num_classes, seed=seed, offset=offset,
                               eta=eta)
    dtype = z.dtype
    d = decoder._replace(weights=[w.to(dtype) for w in decoder.weights], biases=[b.to(dtype) for b in decoder.biases])
    return to_out_dtype(mlp_forward_reference(d, z), out_dtype)
