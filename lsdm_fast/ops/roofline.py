"""Roofline estimates of the fused kernels on an H200, from the shapes alone.

No GPU has run these kernels yet: every number here is an estimate, made to be read against the
first measurement (bench/gpu_check.sh prints both side by side). Per kernel it counts

  flops      the model's FLOPs (2 per multiply-add);
  tc_flops   what the matrix units execute for them: 3xTF32 counts 3x, padded columns count;
  hbm_bytes  device memory traffic: every buffer that cannot stay in L2 read or written once,
             re-reads included where the grid order forces them;
  l2_bytes   L2 -> SM traffic: operand tiles re-read by the tiles of the grid (weights per row
             tile, inputs per column tile);

and bounds its time between an optimistic and a pessimistic roofline:

  low  = max(tc_flops / peak, hbm_bytes / HBM, l2_bytes / L2_high)
  high = max(tc_flops / (TC_EFF_LOW * peak), hbm_bytes / (HBM_EFF_LOW * HBM), l2_bytes / L2_low) + launch

Ceilings (H200 class, `H200`): HBM 4.8 TB/s (datasheet); matrix rates as measured on an H100 (the
same SM array): bf16 790 TFLOP/s, TF32 434, fp32 FMA 52 (docs/design.md §7); L2 -> SM bandwidth
7-10 TB/s (a lead, not measured here); 132 SMs, 60 MB L2; per kernel 5-15 us when launched from
Python (host-bound), 2-4 us as a node of a CUDA graph (launch, ramp and tail of a dependent
kernel), added to both bounds. The pessimistic side assumes 60 % of the matrix peak and 75 % of
the HBM peak. The legacy mma.sync path of the CUDA backend
(WMMA) is taken at 40-60 % of the wgmma peak (Hopper runs its full rate only through wgmma).

`python -m lsdm_fast.ops.roofline` prints the estimates of the issue-22 hot paths.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Ceilings:
    name: str = "H200 (estimate)"
    hbm: float = 4.8e12  # B/s
    l2: tuple = (7e12, 10e12)  # L2 -> SM B/s, low and high
    peak: dict = field(default_factory=lambda: {"bf16": 790e12, "fp16": 790e12, "tf32": 434e12, "fp32": 52e12})
    sms: int = 132
    l2_size: int = 60 * 2**20
    launch_eager: tuple = (5e-6, 15e-6)  # s per kernel launched from Python (host-bound)
    launch_graph: tuple = (2e-6, 4e-6)  # s per dependent kernel of a CUDA graph (launch + ramp + tail)
    tc_eff_low: float = 0.6
    hbm_eff_low: float = 0.75
    mma_sync: tuple = (0.4, 0.6)  # legacy mma.sync rate as a fraction of the wgmma peak


H200 = Ceilings()


@dataclass
class Cost:
    kernel: str
    flops: float
    tc_flops: float
    unit: str  # "bf16", "fp16", "tf32", "fp32" (FMA)
    hbm_bytes: float
    l2_bytes: float
    launches: int = 1
    legacy_mma: bool = False  # mma.sync (CUDA backend) instead of wgmma
    # the pessimistic fraction of the matrix peak, where the kernel's structure sets it lower than
    # Ceilings.tc_eff_low (None: that)
    tc_eff_low: float | None = None

    def seconds(self, c: Ceilings = H200, graph: bool = False) -> tuple[float, float]:
        peak = c.peak[self.unit]
        lo_peak, hi_peak = (peak * c.mma_sync[1], peak * c.mma_sync[0]) if self.legacy_mma else (peak, peak)
        eff = c.tc_eff_low if self.tc_eff_low is None else self.tc_eff_low
        low = max(self.tc_flops / lo_peak, self.hbm_bytes / c.hbm, self.l2_bytes / c.l2[1])
        high = max(self.tc_flops / (eff * hi_peak), self.hbm_bytes / (c.hbm_eff_low * c.hbm),
                   self.l2_bytes / c.l2[0])
        launch = c.launch_graph if graph else c.launch_eager
        return low + self.launches * launch[0], high + self.launches * launch[1]

    def bound(self, c: Ceilings = H200) -> str:
        peak = c.peak[self.unit] * (c.mma_sync[1] if self.legacy_mma else 1.0)
        parts = {"compute": self.tc_flops / peak, "HBM": self.hbm_bytes / c.hbm, "L2": self.l2_bytes / c.l2[1]}
        return max(parts, key=parts.get)


def total(costs: list[Cost], c: Ceilings = H200, graph: bool = False) -> tuple[float, float]:
    lo = sum(k.seconds(c, graph)[0] for k in costs)
    hi = sum(k.seconds(c, graph)[1] for k in costs)
    return lo, hi


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ------------------------------------------------------------------------------ critic step

def critic_step_triton(B: int, widths: list[int], *, before: bool = False, bm: int | None = None,
                       bn: int = 128) -> list[Cost]:
    """The Triton critic step (lsdm_fast/ops/critic_gp_triton.py), float32 TF32 default precision,
    widths N_0 .. N_{L-1} (the last linear layer, N_L = 1, is fused). before=True: the design
    before issue 22 (row tiles fastest: every column tile re-streamed the layer's input; no
    column-major copies, no W^T)."""
    e = 4
    L = len(widths)
    bm = bm or (128 if B >= 2048 else 64)
    Bp = _cdiv(B, bm) * bm
    R = 3 * Bp
    N = widths
    tiles_m = R // bm
    reread = (lambda n: _cdiv(n, bn)) if before else (lambda n: 1)
    costs = []
    # forward layers (u_0 built from x, z in the first)
    for l in range(1, L):
        last = l == L - 1
        K, Nl = N[l - 1], N[l]
        fl = 2 * R * K * Nl
        if l == 1:
            a_hbm = 3 * B * N[0] * e  # x, z_real, z_fake (x once per kind)
        else:
            a_hbm = R * K * e * reread(Nl)
        out = R * Nl * e + R * Nl  # u or D_{L-1} (float), sign mask (int8)
        extra = 0 if before else (2 * Bp * K * e if l == 1 else 0) + (0 if last else 2 * Bp * Nl * e) + K * Nl * e
        if before and l == 1:
            extra += R * K * e  # U_0 stored row-major for every row
        costs.append(Cost(f"forward {l}", fl, fl, "tf32", a_hbm + out + extra,
                          tiles_m * K * Nl * e + R * K * e * _cdiv(Nl, bn)))
    # backward D_{l-1} = s'(u) (D_l W_l); interpolated rows in 3xTF32
    for l in range(L - 1, 1, -1):
        K, Nl = N[l], N[l - 1]
        fl = 2 * R * K * Nl
        tc = 2 * (2 * Bp) * K * Nl + 3 * 2 * Bp * K * Nl
        hbm = R * K * e * reread(Nl) + R * Nl + R * Nl * e
        costs.append(Cost(f"backward {l}", fl, tc, "tf32", hbm, tiles_m * K * Nl * e + R * K * e * _cdiv(Nl, bn)))
    # input gradient: g_0 = D_1 W_1 (3xTF32), norm, r_0, r_1 = s'(u_1) (r_0 W_1^T)
    fl = 2 * Bp * N[1] * N[0] * 2
    tc = 3 * 2 * Bp * N[1] * N[0] + 2 * Bp * N[0] * N[1]
    hbm = Bp * N[1] * e + Bp * N[1] + 3 * Bp * N[0] * e + (Bp * N[1] * e if L > 2 else 0)
    if not before:
        hbm += Bp * N[0] * e  # r_0 column-major
    costs.append(Cost("input gradient", fl, tc, "tf32", hbm, (Bp // bm) * 2 * N[0] * N[1] * e + Bp * N[1] * e))
    # r sweep
    for l in range(2, L):
        K, Nl = N[l - 1], N[l]
        fl = 2 * Bp * K * Nl
        hbm = Bp * K * e * reread(Nl) + Bp * Nl + (0 if l == L - 1 else Bp * Nl * e)
        costs.append(Cost(f"r sweep {l}", fl, fl, "tf32", hbm, (Bp // bm) * K * Nl * e + Bp * K * e * _cdiv(Nl, bn)))
    # weight gradients: dW_l = D_l^T V_{l-1} over the 3Bp rows, each split's tiles together
    fl = sum(2 * R * N[l] * N[l - 1] for l in range(1, L))
    hbm = sum(R * (N[l] + N[l - 1]) * e for l in range(1, L))
    l2 = sum(R * (N[l] * _cdiv(N[l - 1], 128) + N[l - 1] * _cdiv(N[l], 128)) * e for l in range(1, L))
    costs.append(Cost("weight gradients", fl, fl, "tf32", hbm, l2))
    nwb = sum(N[l] * N[l - 1] + N[l] for l in range(1, L))
    costs.append(Cost("finish", nwb, 0, "fp32", 3 * nwb * e, 0))
    return costs


def critic_step_cuda(B: int, widths: list[int]) -> list[Cost]:
    """The CUDA critic step (kernels/critic_gp.cu): WMMA (mma.sync) TF32 GEMMs with 3xTF32 for the
    forward and g_0; column tiles fastest (issue 22); row kernels for u_0, the head, the norm, the
    column sums and the finish. 3L + 3 launches."""
    e = 4
    L = len(widths)
    N = widths
    M = 3 * B
    costs = [Cost("prep u_0", 0, 0, "fp32", 3 * B * N[0] * e + M * N[0] * e, 0)]
    for l in range(1, L):
        fl = 2 * M * N[l - 1] * N[l]
        costs.append(Cost(f"forward {l} (3xTF32)", fl, 3 * fl, "tf32", M * (N[l - 1] + N[l]) * e,
                          _cdiv(M, 128) * N[l - 1] * N[l] * e + M * N[l - 1] * e * _cdiv(N[l], 128), legacy_mma=True))
    costs.append(Cost("head", 2 * M * N[L - 1], 0, "fp32", 2 * M * N[L - 1] * e, 0))
    for l in range(L - 1, 1, -1):
        fl = 2 * M * N[l] * N[l - 1]
        costs.append(Cost(f"backward {l}", fl, fl, "tf32", M * (N[l] + 2 * N[l - 1]) * e,
                          _cdiv(M, 128) * N[l] * N[l - 1] * e + M * N[l] * e * _cdiv(N[l - 1], 128), legacy_mma=True))
    fl = 2 * B * N[1] * N[0]
    costs.append(Cost("g_0 (3xTF32)", fl, 3 * fl, "tf32", B * (N[1] + N[0]) * e, B * N[1] * e, legacy_mma=True))
    costs.append(Cost("norm", 3 * B * N[0], 0, "fp32", 2 * B * N[0] * e, 0))
    for l in range(1, L):
        fl = 2 * B * N[l - 1] * N[l]
        costs.append(Cost(f"r sweep {l}", fl, fl, "tf32", B * (N[l - 1] + 2 * N[l]) * e,
                          _cdiv(B, 128) * N[l - 1] * N[l] * e + B * N[l - 1] * e * _cdiv(N[l], 128), legacy_mma=True))
    fl = sum(2 * M * N[l] * N[l - 1] for l in range(1, L))
    costs.append(Cost("weight gradients", fl, fl, "tf32", sum(M * (N[l] + N[l - 1]) * e for l in range(1, L)),
                      sum(M * (N[l] * _cdiv(N[l - 1], 128) + N[l - 1] * _cdiv(N[l], 128)) * e for l in range(1, L)),
                      legacy_mma=True))
    costs.append(Cost("column sums", 0, 0, "fp32", sum(2 * B * N[l] * e for l in range(1, L)) + 3 * B * N[L - 1] * e,
                      0))
    nwb = sum(N[l] * N[l - 1] for l in range(1, L))
    costs.append(Cost("finalize", nwb, 0, "fp32", 3 * nwb * e, 0))
    return costs


# ------------------------------------------------------------------------------ fused MLP

def fused_mlp_triton(rows: int, dims: list[int], elt: int, *, in_bytes: int, out_bytes: int, bm: int = 128,
                     bns=None, unit: str = "bf16", generate: bool = False) -> Cost:
    """One call of the Triton fused MLP (encode/generate): dims padded to 16, elt bytes per
    activation and weight, BM-row tiles, column tiles bns (per layer; default the backend's)."""
    if bns is None:
        from .encode_generate_triton import _blocks  # noqa: PLC0415 - only for the tile widths
        bns = [_blocks(n, 128) for n in dims[1:]]
    tiles = _cdiv(rows, bm)
    w = sum(dims[l] * dims[l + 1] for l in range(len(dims) - 1)) * elt
    per_tile = w
    for l in range(len(dims) - 1):
        bn, tail = bns[l]
        col_tiles = dims[l + 1] // bn + (1 if tail else 0)
        per_tile += bm * dims[l] * elt * col_tiles  # the layer's input, once per column tile
        if l < len(dims) - 2:
            per_tile += bm * dims[l + 1] * elt  # activations written to the per-program scratch
    fl = 2 * rows * sum(dims[l] * dims[l + 1] for l in range(len(dims) - 1))
    hbm = rows * (in_bytes + out_bytes) + w
    return Cost("fused MLP (Triton)", fl, fl, unit, hbm, tiles * per_tile + rows * out_bytes)


def fused_mlp_cuda(rows: int, dims: list[int], elt: int, *, in_bytes: int, out_bytes: int, bm: int,
                   unit: str = "bf16") -> Cost:
    """The CUDA fused MLP (kernels/mlp_fused.cu): activations stay in shared memory; every BM-row
    block streams all the weights from L2; mma.sync."""
    tiles = _cdiv(rows, bm)
    w = sum(dims[l] * dims[l + 1] for l in range(len(dims) - 1)) * elt
    fl = 2 * rows * sum(dims[l] * dims[l + 1] for l in range(len(dims) - 1))
    hbm = rows * (in_bytes + out_bytes) + w
    return Cost("fused MLP (CUDA)", fl, fl, unit, hbm, tiles * w + rows * (in_bytes + out_bytes), legacy_mma=True)


def _pad16(n: int) -> int:
    return _cdiv(n, 16) * 16


# ------------------------------------------------------------------------------ the patch autoencoder (issue 24)

def _pow2(n: int) -> int:
    return max(16, 1 << (int(n) - 1).bit_length())


# The fused patch kernels run each position as a chain of small dependent GEMMs (N = 16..64) on one CTA of 8
# warps per SM (registers: ~240 a thread); the pessimistic side takes 30 % of the matrix peak for them.
PATCH_TC_EFF_LOW = 0.3


@dataclass(frozen=True)
class PatchShape:
    """The patch model (conv_design="patch", the default design, whose default width is 96; W 64 here unless told)
    for 28 x 28 grey images unless told: generator (noise + classes) -> hidden -> latent; PatchDecoder /
    PatchEncoder of width W, depth K, stride S, C channels."""
    side: int = 28
    channels: int = 1
    width: int = 64
    depth: int = 1
    stride: int = 4
    latent: int = 32
    gen_dims: tuple = (42, 512, 512, 32)

    @property
    def low(self) -> int:
        return self.side // self.stride

    @property
    def positions(self) -> int:
        return self.low ** 2

    @property
    def pixels(self) -> int:
        return self.channels * self.side ** 2


def patch_generate_triton(rows: int, shape: PatchShape = PatchShape(), *, elt: int = 2, out_bytes: int = 1,
                          unit: str = "bf16", bm: int = 128, bn: int = 128) -> list[Cost]:
    """One launch of encode_generate_triton_patch._patch_generate_kernel, as two phases of each row tile: the
    generator through the per-program scratch (as the fused MLP: weights per tile, each layer's input per
    column tile), then the tail: per position the head's slice, the mix layers and the four conv quarters by
    TMA from L2, the carry buffer's cells written and read once (float32), the images written once."""
    tiles = _cdiv(rows, bm)
    g = [_pad16(d) for d in shape.gen_dims]
    gw = sum(g[l] * g[l + 1] for l in range(len(g) - 1))
    per_tile = gw * elt + bm * g[0] * elt  # weights, the generator input written
    for l in range(len(g) - 1):
        per_tile += bm * g[l] * elt * _cdiv(g[l + 1], bn) + bm * g[l + 1] * elt
    gen_fl = 2 * rows * sum(a * b for a, b in zip(shape.gen_dims[:-1], shape.gen_dims[1:]))
    gen = Cost("patch generate: generator", gen_fl, 2 * tiles * bm * gw, unit, rows * 8 + gw * elt,
               tiles * per_tile)
    p, w, wp, lp = shape.positions, shape.width, _pow2(shape.width), _pow2(shape.latent)
    q, qw = shape.stride ** 2 * shape.channels, _pow2(shape.stride ** 2 * shape.channels)
    fl = 2 * rows * p * (shape.latent * w + shape.depth * w * w + 4 * q * w)
    tc = 2 * tiles * bm * p * (lp * wp + shape.depth * wp * wp + 4 * qw * wp)
    weights = p * (wp * lp + shape.depth * wp * wp + 4 * qw * wp) * elt
    carry = 2 * shape.low * (shape.low + 1) * bm * qw * 4
    out = rows * shape.pixels * out_bytes
    tail = Cost("patch generate: tail", fl, tc, unit, out + weights, tiles * (weights + carry + bm * lp * elt) + out,
                launches=0, tc_eff_low=PATCH_TC_EFF_LOW)
    return [gen, tail]


def patch_encode_triton(rows: int, shape: PatchShape = PatchShape(), *, elt: int = 2, in_bytes: int = 2,
                        unit: str = "bf16", bm: int = 128) -> list[Cost]:
    """One launch of encode_generate_triton_patch._patch_encode_kernel: each position's (C, 2S, 2S) window
    gathered from the images (every pixel by the 2 x 2 windows that cover it: 4x the image bytes through L2,
    once from HBM), the conv, mix and fc-slice weights by TMA per position, the latents written once."""
    tiles = _cdiv(rows, bm)
    p, w, wp, latp = shape.positions, shape.width, _pow2(shape.width), _pow2(shape.latent)
    kf = 4 * shape.stride ** 2 * shape.channels
    kfp = _cdiv(kf, 64) * 64 if kf >= 64 else _pow2(kf)
    fl = 2 * rows * p * (kf * w + shape.depth * w * w + w * shape.latent)
    tc = 2 * tiles * bm * p * (kfp * wp + shape.depth * wp * wp + wp * latp)
    weights = p * (kfp * wp + shape.depth * wp * wp + latp * wp) * elt
    images = rows * shape.pixels * in_bytes
    out = rows * shape.latent * 4
    return [Cost("patch encode", fl, tc, unit, images + out + weights, 4 * images + tiles * weights + out,
                 tc_eff_low=PATCH_TC_EFF_LOW)]


def patch_generate_unfused(rows: int, shape: PatchShape = PatchShape(), *, elt: int = 2,
                           chunk: int = 65536) -> list[Cost]:
    """What ran before issue 22 phase 2 (and still runs for float32 "ieee" and the CUDA backend): the fused MLP
    kernel writes the head's output, then the module's tail in eager torch, chunk by chunk: the mix GEMMs, one
    GEMM to the patches, F.fold, the bias, the sigmoid and the uint8 conversion each read and write HBM."""
    mlp = fused_mlp_triton(rows, [_pad16(d) for d in shape.gen_dims] + [shape.positions * shape.width], elt,
                           in_bytes=8, out_bytes=elt * shape.positions * shape.width, generate=True)
    p, w, q = shape.positions, shape.width, 4 * shape.stride ** 2 * shape.channels
    h = rows * p * w * elt
    patches = rows * p * q * elt
    img = rows * shape.pixels * elt
    hbm = h * (1 + 2 * shape.depth) + (h + patches) + (patches + img) + 2 * img + 2 * img + img + rows * shape.pixels
    fl = 2 * rows * p * (shape.depth * w * w + q * w)
    launches = _cdiv(rows, chunk) * (2 * shape.depth + 6)
    return [mlp, Cost("torch tail (eager)", fl, fl, "bf16", hbm, hbm, launches=launches)]


def _ms(t: tuple[float, float]) -> str:
    return f"{t[0] * 1e3:.2f}-{t[1] * 1e3:.2f} ms"


def hot_paths() -> list[tuple[str, str, list[Cost]]]:
    """(name, target, costs) of the issue-22 hot paths, as bench/ measures them."""
    out = []
    for B in (256, 4096, 65536):
        out.append((f"critic step B={B}, 26-512-512-1, Triton", "<= 2.5 ms" if B == 65536 else
                    ("<= 0.15 ms (graph)" if B == 256 else "-"), critic_step_triton(B, [26, 512, 512])))
    out.append(("critic step B=65536, Triton before issue 22", "-", critic_step_triton(65536, [26, 512, 512],
                                                                                       before=True)))
    out.append(("critic step B=65536, CUDA", "<= 2.5 ms", critic_step_cuda(65536, [26, 512, 512])))
    gen = [_pad16(26), 512, 512, 32, 512, 512, 784]
    enc = [784, 512, 512, 32]
    from .encode_generate_triton import BN_MAX_ENCODE_HALF, _blocks  # noqa: PLC0415
    n = 2**20
    out.append(("generate 2^20 MLP bf16, Triton", "<= 3 ms", [fused_mlp_triton(
        n, gen, 2, in_bytes=8, out_bytes=2 * 784, bns=[_blocks(d, 128) for d in gen[1:]], generate=True)]))
    out.append(("encode 2^20 MLP bf16, Triton", "<= 3.5 ms", [fused_mlp_triton(
        n, enc, 2, in_bytes=2 * 784, out_bytes=4 * 32, bns=[_blocks(d, BN_MAX_ENCODE_HALF) for d in enc[1:]])]))
    out.append(("encode 2^20 MLP bf16, Triton before issue 22", "-", [fused_mlp_triton(
        n, enc, 2, in_bytes=2 * 784, out_bytes=4 * 32, bns=[_blocks(d, 128) for d in enc[1:]])]))
    out.append(("generate 2^20 MLP bf16, CUDA (64-row blocks)", "<= 3 ms", [fused_mlp_cuda(
        n, [32, 512, 512, 32, 512, 512, 800], 2, in_bytes=8, out_bytes=2 * 784, bm=64)]))
    # the patch model (issue 24's patch autoencoder) at W 64, K 1, S 4, bf16 weights and images; the default model (W 96) below
    out.append(("generate 2^20 patch model", "<= 8 ms, <= 4 GB", patch_generate_triton(n, out_bytes=2)))
    out.append(("encode 2^20 patch model", "<= 8 ms", patch_encode_triton(n)))
    out.append(("generate 2^20 patch model, W 96 (BM 64)", "-",
                patch_generate_triton(n, PatchShape(width=96), out_bytes=2, bm=64)))
    out.append(("encode 2^20 patch model, W 96", "-", patch_encode_triton(n, PatchShape(width=96))))
    out.append(("encode 2^20 patch model, float32 images", "-", patch_encode_triton(n, in_bytes=4)))
    out.append(("generate 2^20 patch model, unfused (before)", "-", patch_generate_unfused(n)))
    return out


def report(c: Ceilings = H200) -> str:
    rows = [f"Estimates for {c.name}: HBM {c.hbm / 1e12:.1f} TB/s, L2->SM {c.l2[0] / 1e12:.0f}-{c.l2[1] / 1e12:.0f} "
            f"TB/s, bf16 {c.peak['bf16'] / 1e12:.0f} / TF32 {c.peak['tf32'] / 1e12:.0f} TFLOP/s (not measured here)",
            "", "| hot path | target | GFLOP | HBM GB | L2 GB | launches | eager | CUDA graph | bound by |",
            "|---|---|---:|---:|---:|---:|---|---|---|"]
    for name, target, costs in hot_paths():
        fl = sum(k.flops for k in costs) / 1e9
        hbm = sum(k.hbm_bytes for k in costs) / 1e9
        l2 = sum(k.l2_bytes for k in costs) / 1e9
        worst = max(costs, key=lambda k: k.seconds(c)[1])
        rows.append(f"| {name} | {target} | {fl:.1f} | {hbm:.2f} | {l2:.1f} | {sum(k.launches for k in costs)} | "
                    f"{_ms(total(costs, c))} | {_ms(total(costs, c, graph=True))} | "
                    f"{worst.bound(c)} ({worst.kernel}) |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(report())
