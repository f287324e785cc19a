// Fused WGAN-GP critic step (DESIGN.md section 3), CUDA C++ with no torch headers.
//
// Critic: L = 2..4 linear layers, LeakyReLU(slope) hidden layers (ReLU: slope 0), one output.
// The real, fake and interpolated batches are stacked as M = 3B rows (kind k = 0, 1, 2) with
// weights c_k = -1/B, +1/B, 1, so that every parameter gradient is one sum over rows:
//
//   dL/dW_l = sum_rows D_l[row]^T U_{l-1}[row]   (U extended by a bias column; l = 1..L)
//   D_l = c_k * delta_l,  delta_l = s'(a_l) g_l,  g_{L-1} = w_L,  g_{l-1} = W_l^T delta_l
//   U_l = u_l (bias column 1) for real/fake rows;
//   U_l = r_l (bias column 0) for interpolated rows, r_0 = 2 lambda (|g|-1) g / (B |g|),
//         r_l = s'(a_l) (W_l r_{l-1});   db_L = 0.
//
// Two launches per critic step: critic_rows_kernel (one block per (sample, kind): forward,
// backward sweep, norm, r sweep; activations in a global scratch buffer) and
// critic_wgrad_kernel (one thread per weight/bias element summing over the 3B rows; the last
// block reduces loss / wasserstein / penalty). Correctness first: this is the obviously-correct
// mirror of the Triton kernel (lsdm_fast/ops/critic_gp_triton.py), not a tuned one.
// The scratch layout is the same as the Triton kernel's.
#pragma once
#include <cstddef>
#include <cuda_runtime_api.h>

namespace lsdm {
namespace cuda {

constexpr int kCriticMaxLayers = 4;

// Offsets (in elements) of the scratch regions:
//   ACT_l (M x N_l), l = 0..L-1: forward activations (u_0 = critic input)
//   D_l   (M x N_l), l = 1..L  : c_k * delta_l  (N_L = 1)
//   R_l   (B x N_l), l = 0..L-1: r sweep of the interpolated rows (critic step only)
//   F     (M)                  : critic values;  P (B): (|g_i| - 1)^2
struct CriticGpLayout {
  size_t act[kCriticMaxLayers];
  size_t d[kCriticMaxLayers];  // d[l-1] is D_l
  size_t r[kCriticMaxLayers];
  size_t f;
  size_t p;
  size_t total;
};

// widths[0..n_layers]: N_0 (input), hidden widths, N_L = 1. step=false: score-gradient layout.
inline CriticGpLayout critic_gp_layout(const int* widths, int n_layers, int batch, bool step) {
  CriticGpLayout lay{};
  const size_t B = static_cast<size_t>(batch);
  const size_t M = step ? 3 * B : B;
  size_t off = 0;
  for (int l = 0; l < n_layers; ++l) { lay.act[l] = off; off += M * static_cast<size_t>(widths[l]); }
  for (int l = 1; l <= n_layers; ++l) { lay.d[l - 1] = off; off += M * static_cast<size_t>(widths[l]); }
  for (int l = 0; l < n_layers; ++l) { lay.r[l] = off; if (step) off += B * static_cast<size_t>(widths[l]); }
  lay.f = off; off += M;
  lay.p = off; off += B;
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
  const T* W[kCriticMaxLayers] = {};  // W[l]: (widths[l+1], widths[l]) as nn.Linear
  const T* b[kCriticMaxLayers] = {};  // b[l]: (widths[l+1],)
  int widths[kCriticMaxLayers + 1] = {};
  int n_layers = 0;  // 2..4
  int batch = 0;
  int dx = 0;
  T slope = T(0.2);
  T gp_weight = T(10);
  bool latent = false;  // penalty norm over the z columns only
  T* scratch = nullptr;  // critic_gp_layout(...).total elements
  // critic step outputs
  T* grad_w[kCriticMaxLayers] = {};
  T* grad_b[kCriticMaxLayers] = {};
  T* out3 = nullptr;  // loss, wasserstein, penalty
  // score-gradient outputs
  T* dz = nullptr;     // (B, N_0 - dx)
  T* score = nullptr;  // (1,)
};

// One WGAN-GP critic step: loss, wasserstein, penalty and every parameter gradient. 2 launches.
template <typename T>
cudaError_t critic_gp_step(const CriticGpParams<T>& p, cudaStream_t stream);

// (mean_i f(x_i, z_i), d mean f / dz) for the generator step. 2 launches.
template <typename T>
cudaError_t critic_score_grad(const CriticGpParams<T>& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace lsdm
