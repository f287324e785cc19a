// C entry points into the emulated fused MLP (kernels/mlp_fused.cu compiled for the host).
#include "mlp_fused.cuh"

namespace {
LsdmMLPDesc desc(int L, int math, const int* dims, const void* const* w, const float* const* b, const int* act,
                 const float* slope) {
  LsdmMLPDesc d{};
  d.num_layers = L;
  d.math = math;
  for (int l = 0; l <= L; ++l) d.dims[l] = dims[l];
  for (int l = 0; l < L; ++l) {
    d.weights[l] = w[l];
    d.biases[l] = b[l];
    d.act[l] = act[l];
    d.slope[l] = slope[l];
  }
  return d;
}
}  // namespace

extern "C" {
int emu_mlp_tile_rows(int L, int math, const int* dims, int max_smem) {
  const void* w[LSDM_MLP_MAX_LAYERS] = {};
  const float* b[LSDM_MLP_MAX_LAYERS] = {};
  int act[LSDM_MLP_MAX_LAYERS] = {};
  float slope[LSDM_MLP_MAX_LAYERS] = {};
  return lsdm_mlp_tile_rows(desc(L, math, dims, w, b, act, slope), max_smem);
}
int emu_mlp_forward(int L, int math, const int* dims, const void* const* w, const float* const* b, const int* act,
                    const float* slope, const void* y, int y_dtype, long long y_stride, long long n, void* out,
                    int out_dtype) {
  return lsdm_mlp_forward(desc(L, math, dims, w, b, act, slope), y, y_dtype, y_stride, n, out, out_dtype, nullptr);
}
int emu_generate(int L, int math, const int* dims, const void* const* w, const float* const* b, const int* act,
                 const float* slope, int noise_dim, int cond_dim, const void* cond, int cond_dtype,
                 long long cond_stride, const void* eta, int eta_dtype, long long eta_stride, unsigned long long seed,
                 long long row_offset, long long n, void* out, int out_dtype) {
  return lsdm_generate(desc(L, math, dims, w, b, act, slope), noise_dim, cond_dim, cond, cond_dtype, cond_stride, eta,
                       eta_dtype, eta_stride, seed, row_offset, n, out, out_dtype, nullptr);
}
int emu_philox_normal(unsigned long long seed, long long row_offset, long long rows, int cols, float* out) {
  return lsdm_philox_normal(seed, row_offset, rows, cols, out, nullptr);
}
}
