// Fused WGAN-GP critic step (docs/design.md §3), CUDA C++ with no torch headers.
//
// Critic: L = 2..4 linear layers, LeakyReLU(slope) hidden layers (ReLU: slope 0), one output.
// The real, fake and interpolated batches are stacked as M = 3B rows (kind k = 0, 1, 2) with
// weights c_k = -1/B, +1/B, 1, so that every parameter gradient is one sum over rows:
//
//   dL/dW_l = sum_rows D_l[row]^T V_{l-1}[row]      (l = 1..L)
//   dL/db_l = sum_{real, fake rows} D_l[row]          (l < L; db_L = 0)
//   D_l = c_k * delta_l,  delta_l = s'(a_l) g_l,  g_{L-1} = w_L,  g_{l-1} = W_l^T delta_l
//   V_l = u_l for real and fake rows, r_l for interpolated rows, where
//         r_0 = 2 lambda (|g_0| - 1) g_0 / (B |g_0|),  r_l = s'(a_l) (W_l r_{l-1}).
// s'(a_l) is read from the sign of the stored forward activation u_l (u_l > 0 exactly when
// a_l > 0 for slope >= 0), so the backward sweeps reuse the forward's signs.
//
// Launches per critic step (3L + 3, one more for odd widths; all on the given stream, no host
// synchronisation and no allocation: the caller passes one scratch buffer of
// critic_gp_layout(...).total elements):
//   prep     u_0 rows (x, z_real), (x, z_fake), (x, t z_real + (1 - t) z_fake)
//   [pad     weights whose rows are not 16-byte aligned, into the scratch, for cp.async]
//   forward  L-1 tile GEMMs U_l = s(U_{l-1} W_l^T + b_l)
//   head     f = u_{L-1} . w_L + b_L and D_{L-1} = c s'(u_{L-1}) w_L (one warp per row)
//   backward L-2 tile GEMMs D_{l-1} = s'(u_{l-1}) (D_l W_l)
//   input    g_0 = D_1 W_1 for the interpolated rows; norm: |g_0|, (|g_0| - 1)^2, r_0 (per row)
//   r sweep  L-1 tile GEMMs R_l = s'(u_l) (R_{l-1} W_l^T) over the interpolated rows
//   wgrad    one grouped launch: D_l^T V_{l-1} for l < L over the real and fake rows and over the
//            interpolated rows (against r), each split into fixed row chunks whose partial
//            products finalize sums in a fixed order (deterministic, no float atomics)
//   colsum   db_l and dw_L as column sums over fixed row chunks
//   finalize the chunk sums in a fixed order, and loss / wasserstein / penalty
// The GEMMs are 128x128 block tiles, operands staged through shared memory with 16-byte
// cp.async in a 3-stage pipeline. float32 math (CriticPrecision): TF32 for the backward, r-sweep
// and weight-gradient GEMMs with 3xTF32 for the forward (its signs pick s'(a) for every later
// sweep) and for g_0 (|g_0| - 1 needs float32 accuracy) by default; 3xTF32 or FMA ("ieee")
// throughout on request. float64: FMA. Each GEMM's grid runs column tiles fastest (blockIdx.x), so
// the blocks of one row tile run together and its A rows come from HBM once (issue 22; row tiles
// fastest re-streamed A once per column tile). Operand tiles: 16-byte cp.async (LDGSTS.128 only in
// the SASS; WMMA loads either layout from shared memory, so no transposed copies are needed).
//
// Estimates for an H200 (lsdm_fast/ops/roofline.py; never run on a GPU), critic 26-512-512-1,
// float32 "tf32", B = 65536 (M = 3B rows), per launch: forward 2 (3xTF32) 309 GFLOP executed,
// 0.8 GB HBM, 3.2 GB L2 -> SM: 1.2-3.0 ms, bound by mma.sync (taken at 40-60 % of the wgmma peak);
// backward 2 103 GFLOP, 1.2 GB: 0.4-1.0 ms; r sweeps 0.2-0.4 ms; weight gradients 108 GFLOP,
// 1.2 GB: 0.4-1.0 ms; the row kernels (prep, head, norm, column sums, finalize) 2.6 GB of HBM
// between them: 0.4-0.6 ms. Step: 2.7-6.2 ms (12 launches), against 1.5-2.2 ms for the Triton
// backend on wgmma; B = 4096: 0.19-0.43 ms; B = 256: launch-bound, 0.04-0.07 ms in a CUDA graph.
#pragma once
#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

namespace lsdm {
namespace cuda {

constexpr int kCriticMaxLayers = 4;  // linear layers; = MAX_LAYERS in lsdm_fast/ops/critic_gp_cuda.py (registry limit)

enum class CriticPrecision : int { kIeee = 0, kTf32 = 1, kTf32x3 = 2 };

// Scratch regions (offsets in elements, every region 128-byte aligned). Row strides ld[l] are
// N_l rounded up to 4 so that rows are 16-byte aligned for cp.async.
//   V_l (4B x ld[l]), l = 0..L-1: rows [0, B) real u_l, [B, 2B) fake u_l, [2B, 3B) interpolated
//       u_l, [3B, 4B) r_l of the interpolated rows. Score mode: B rows of u_l.
//   D_l (3B x ld[l]), l = 1..L-1: c * delta_l for real, fake, interpolated rows.
//   Wpad_l (N_{l+1} x ld[l]), l = 0..L-2: W_{l+1} copied with 16-byte aligned rows, for layers
//       whose own rows are not (odd widths); untouched otherwise.
//   F (3B): critic values. P (B): (|g_0| - 1)^2.
//   wpart_l (2 w_splits x N_l x N_{l-1}), l = 1..L-1: partial dW_l of each row chunk, the real and
//       fake rows' chunks first, then the interpolated rows'.
//   cpart_l (c_splits x N_l), l = 1..L-1: partial db_l; cpart_L (2 c_splits x N_{L-1}): partial
//       dw_L, real and fake rows' chunks, then the interpolated rows'.
struct CriticGpLayout {
  int64_t ld[kCriticMaxLayers];
  size_t v[kCriticMaxLayers];
  size_t d[kCriticMaxLayers];     // d[l] is D_l (d[0] unused)
  size_t wpad[kCriticMaxLayers];  // wpad[l] holds W_{l+1}, l < L - 1
  size_t f, p;
  size_t wpart[kCriticMaxLayers];      // wpart[l] for dW_l, l = 1..L-1
  size_t cpart[kCriticMaxLayers + 1];  // cpart[l] for db_l (l < L) and cpart[L] for dw_L
  int w_splits, c_splits;              // row chunks of each weight-gradient / column-sum problem
  size_t total;
};

// widths[0..n_layers]: N_0 (critic input), hidden widths, N_L = 1. step = false: the
// score-gradient layout (B rows, no r sweep, no gradients). Host-only arithmetic.
inline CriticGpLayout critic_gp_layout(const int* widths, int n_layers, int batch, bool step) {
  CriticGpLayout lay{};
  const int64_t B = batch;
  const int64_t M = step ? 3 * B : B;
  size_t off = 0;
  auto take = [&off](size_t n) {
    const size_t at = off;
    off += (n + 31) / 32 * 32;  // 128-byte alignment for float, 256 for double
    return at;
  };
  for (int l = 0; l < n_layers; ++l) {
    lay.ld[l] = (widths[l] + 3) / 4 * 4;
    lay.v[l] = take(static_cast<size_t>((step ? 4 * B : B) * lay.ld[l]));
  }
  for (int l = 1; l < n_layers; ++l) lay.d[l] = take(static_cast<size_t>(M * lay.ld[l]));
  for (int l = 0; l + 1 < n_layers; ++l) lay.wpad[l] = take(static_cast<size_t>(widths[l + 1]) * lay.ld[l]);
  lay.f = take(static_cast<size_t>(M));
  lay.p = take(static_cast<size_t>(B));
  if (step) {
    // Row chunks: fixed by the shapes alone, so results are the same run to run. Enough chunks
    // to fill the GPU at large batch, few enough that the partial sums stay small.
    auto splits = [M](int64_t rows_per_chunk, int64_t cap) {
      const int64_t s = (M + rows_per_chunk - 1) / rows_per_chunk;
      return static_cast<int>(s < 1 ? 1 : (s > cap ? cap : s));
    };
    lay.w_splits = splits(4096, 16);
    lay.c_splits = splits(2048, 32);
    for (int l = 1; l < n_layers; ++l)
      lay.wpart[l] = take(2 * static_cast<size_t>(lay.w_splits) * widths[l] * widths[l - 1]);
    for (int l = 1; l < n_layers; ++l) lay.cpart[l] = take(static_cast<size_t>(lay.c_splits) * widths[l]);
    lay.cpart[n_layers] = take(2 * static_cast<size_t>(lay.c_splits) * widths[n_layers - 1]);
  }
  lay.total = off;
  return lay;
}

template <typename T>
struct CriticGpParams {
  // inputs (row-major, contiguous)
  const T* x = nullptr;       // (B, dx)
  const T* z_real = nullptr;  // (B, N_0 - dx); the z of critic_score_grad
  const T* z_fake = nullptr;  // (B, N_0 - dx)
  const T* t = nullptr;       // (B,)
  const T* W[kCriticMaxLayers] = {};  // W[l]: (widths[l+1], widths[l]) as nn.Linear, contiguous
  const T* b[kCriticMaxLayers] = {};  // b[l]: (widths[l+1],)
  int widths[kCriticMaxLayers + 1] = {};
  int n_layers = 0;  // 2..4
  int batch = 0;
  int dx = 0;
  T slope = T(0.2);
  T gp_weight = T(10);
  bool latent = false;  // penalty norm over the z columns only
  CriticPrecision precision = CriticPrecision::kTf32;  // float only; double is always plain FMA
  T* scratch = nullptr;  // critic_gp_layout(...).total elements, 16-byte aligned
  // critic step outputs
  T* grad_w[kCriticMaxLayers] = {};
  T* grad_b[kCriticMaxLayers] = {};
  T* out3 = nullptr;  // loss, wasserstein, penalty
  // score-gradient outputs
  T* dz = nullptr;     // (B, N_0 - dx)
  T* score = nullptr;  // (1,)
};

// One WGAN-GP critic step: loss, wasserstein, penalty and every parameter gradient.
template <typename T>
cudaError_t critic_gp_step(const CriticGpParams<T>& p, cudaStream_t stream);

// (mean_i f(x_i, z_i), d mean f / dz) for the generator step.
template <typename T>
cudaError_t critic_score_grad(const CriticGpParams<T>& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace lsdm
