// Fused MLP forward (latent encoding) and fused one-step generation, CUDA C++ without torch
// headers: raw pointers, sizes and a cudaStream_t. See lsdm_fast/ops/encode_generate_cuda.py.
//
// Layout: an MLP of L layers (1 <= L <= LSDM_MLP_MAX_LAYERS in total; generate passes the
// generator's layers followed by the decoder's) described by
//   dims[0..L]      widths (dims[0] = input width, dims[l+1] = out width of layer l),
//   weights[l]      float32 (dims[l+1], dims[l]) row-major, like nn.Linear,
//   biases[l]       float32 (dims[l+1]),
//   act[l]          LSDM_ACT_* applied after layer l, slope[l] the LeakyReLU slope.
// All pointers are device pointers; the small per-layer arrays are passed by value.
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

#define LSDM_MLP_MAX_LAYERS 8

enum LsdmAct : int { LSDM_ACT_NONE = 0, LSDM_ACT_LEAKY_RELU = 1, LSDM_ACT_RELU = 2, LSDM_ACT_SILU = 3,
                     LSDM_ACT_SIGMOID = 4 };
// element types of inputs (y / eta / condition tensor) and outputs
enum LsdmDType : int { LSDM_F32 = 0, LSDM_BF16 = 1, LSDM_F16 = 2, LSDM_U8 = 3, LSDM_F64 = 4, LSDM_I64 = 5,
                       LSDM_I32 = 6 };

struct LsdmMLPDesc {
  int num_layers;
  int dims[LSDM_MLP_MAX_LAYERS + 1];
  const float* weights[LSDM_MLP_MAX_LAYERS];
  const float* biases[LSDM_MLP_MAX_LAYERS];
  int act[LSDM_MLP_MAX_LAYERS];
  float slope[LSDM_MLP_MAX_LAYERS];
};

// out[i, :] = mlp(y[i, :]) for i < n; y has row stride y_stride (elements) and type y_dtype
// (F32/BF16/F16); out is (n, dims[L]) contiguous of type out_dtype (F32/BF16/F16/U8/F64;
// U8 = round(clamp(v, 0, 1) * 255)). Returns the launch's cudaError_t.
cudaError_t lsdm_mlp_forward(const LsdmMLPDesc& mlp, const void* y, int y_dtype, int64_t y_stride, int64_t n,
                             void* out, int out_dtype, cudaStream_t stream);

// y[i] = mlp(cat(eta_i, x_i)) with
//   eta_i = Philox normal noise of (seed, row offset + i) exactly as Triton's tl.randn(seed, (offset + i)
//           * noise_dim + j) and lsdm_fast.ops.philox.philox_normal, when eta == nullptr; otherwise
//           eta rows (row stride eta_stride, type eta_dtype F32/BF16/F16);
//   x_i   = one_hot(labels[i], cond_dim) when cond_dtype is I64/I32 (cond is a label vector), or row i of
//           the (n, cond_dim) condition tensor cond (row stride cond_stride, F32/BF16/F16).
// dims[0] must equal noise_dim + cond_dim.
cudaError_t lsdm_generate(const LsdmMLPDesc& mlp, int noise_dim, int cond_dim, const void* cond, int cond_dtype,
                          int64_t cond_stride, const void* eta, int eta_dtype, int64_t eta_stride, uint64_t seed,
                          int64_t row_offset, int64_t n, void* out, int out_dtype, cudaStream_t stream);

// Philox normal noise alone (for tests): out[i, j] (float32, (rows, cols) contiguous).
cudaError_t lsdm_philox_normal(uint64_t seed, int64_t row_offset, int64_t rows, int cols, float* out,
                               cudaStream_t stream);
