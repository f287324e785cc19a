// Fused MLP forward (latent encoding) and fused one-step generation on the tensor cores, CUDA C++
// without torch headers: raw pointers, sizes and a cudaStream_t. See
// lsdm_fast/ops/encode_generate_cuda.py.
//
// One thread block per tile of BM rows runs every layer: the tile's activations stay in shared
// memory (two buffers, in the operand type) from the input to the last layer, whose output is
// written once, converted to the requested type. Each layer is a BM x N x K product computed in
// column chunks of 128 outputs; weight tiles (128 x 64) stream from global memory (L2) through a
// 3-stage (2 where shared memory is short) cp.async pipeline that runs on across chunks and
// layers. BM is the most rows (128, 64, 32, 16) whose buffers fit: every row tile reads all the
// weights once from L2, so more rows mean less L2 traffic. Math: bf16 or fp16 operands
// (wmma m16n16k16), or float32 operands rounded to TF32 (m16n16k8), always float accumulation;
// bias and activation in float32, then rounded to the operand type for the next layer.
//
// Estimates for an H200 (lsdm_fast/ops/roofline.py; never run on a GPU): the activations never
// leave shared memory, so the L2 -> SM traffic is the weights once per block. 2^20 MNIST
// generations (26->512->512->32->512->512->784, bf16): the two 512-wide buffers of 128 rows do not
// fit with the weight stages, so blocks are 64 rows: 16384 blocks x 2.1 MB = 34 GB from L2, 2.06
// TFLOP on mma.sync (taken at 40-60 % of the wgmma peak): 4.4-10.9 ms, bound by the matrix rate.
// 2^20 encodings (784->512->512->32): 64-row blocks, 24 GB from L2, 1.43 TFLOP: 3.0-7.6 ms. The
// Triton kernel (wgmma) is estimated at 4.0-5.7 ms and 2.0-3.0 ms: "auto" ranks it first.
//
// Layers are packed once per model (the Python side caches them): weights[l] is
// (lsdm_mlp_pad(dims[l+1]), lsdm_mlp_pad(dims[l])) row-major in the operand type, zero outside
// (dims[l+1], dims[l]); biases[l] is float32 (lsdm_mlp_pad(dims[l+1])), zero padded. Generate
// passes the generator's layers followed by the decoder's.
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

#define LSDM_MLP_MAX_LAYERS 8

enum LsdmAct : int { LSDM_ACT_NONE = 0, LSDM_ACT_LEAKY_RELU = 1, LSDM_ACT_RELU = 2, LSDM_ACT_SILU = 3,
                     LSDM_ACT_SIGMOID = 4 };
// element types of inputs (y / eta / condition tensor) and outputs
enum LsdmDType : int { LSDM_F32 = 0, LSDM_BF16 = 1, LSDM_F16 = 2, LSDM_U8 = 3, LSDM_F64 = 4, LSDM_I64 = 5,
                       LSDM_I32 = 6 };
// operand type and tensor-core instruction: weights are packed in float32 (TF32), bf16 or fp16
enum LsdmMath : int { LSDM_MATH_TF32 = 0, LSDM_MATH_BF16 = 1, LSDM_MATH_F16 = 2 };

struct LsdmMLPDesc {
  int num_layers;
  int math;  // LsdmMath
  int dims[LSDM_MLP_MAX_LAYERS + 1];
  const void* weights[LSDM_MLP_MAX_LAYERS];  // packed, 16-byte aligned
  const float* biases[LSDM_MLP_MAX_LAYERS];  // packed
  int act[LSDM_MLP_MAX_LAYERS];
  float slope[LSDM_MLP_MAX_LAYERS];
};

// Packed width: a whole number of 32-wide k-tiles.
inline int lsdm_mlp_pad(int n) { return (n + 31) / 32 * 32; }

// Rows per thread block the kernel would use for this MLP with max_smem bytes of shared memory
// per block (cudaDevAttrMaxSharedMemoryPerBlockOptin), or 0 when even 16 rows do not fit
// (the caller then needs another backend).
int lsdm_mlp_tile_rows(const LsdmMLPDesc& mlp, int max_smem);

// out[i, :] = mlp(y[i, :]) for i < n; y has row stride y_stride (elements) and type y_dtype
// (F32/BF16/F16); out is (n, dims[L]) contiguous of type out_dtype (F32/BF16/F16/U8/F64;
// U8 = round(clamp(v, 0, 1) * 255), half to even). Returns the launch's cudaError_t.
cudaError_t lsdm_mlp_forward(const LsdmMLPDesc& mlp, const void* y, int y_dtype, int64_t y_stride, int64_t n,
                             void* out, int out_dtype, cudaStream_t stream);

// y[i] = mlp(cat(eta_i, x_i)) with
//   eta_i = Philox normal noise of (seed, row offset + i) exactly as Triton's tl.randn(seed, (offset + i)
//           * noise_dim + j) and lsdm_fast.ops.philox.philox_normal, when eta == nullptr; otherwise
//           eta rows (row stride eta_stride, type eta_dtype F32/BF16/F16);
//   x_i   = one_hot(labels[i], cond_dim) when cond_dtype is I64/I32 (cond is a label vector; labels
//           outside [0, cond_dim) give a zero row: the caller validates them), or row i of the
//           (n, cond_dim) condition tensor cond (row stride cond_stride, F32/BF16/F16).
// dims[0] must equal noise_dim + cond_dim.
cudaError_t lsdm_generate(const LsdmMLPDesc& mlp, int noise_dim, int cond_dim, const void* cond, int cond_dtype,
                          int64_t cond_stride, const void* eta, int eta_dtype, int64_t eta_stride, uint64_t seed,
                          int64_t row_offset, int64_t n, void* out, int out_dtype, cudaStream_t stream);

// Philox normal noise alone (for tests): out[i, j] (float32, (rows, cols) contiguous).
cudaError_t lsdm_philox_normal(uint64_t seed, int64_t row_offset, int64_t rows, int cols, float* out,
                               cudaStream_t stream);
