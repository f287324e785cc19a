// Fused MLP forward / one-step generation. Deliberately simple (it is first run on a GPU in a
// later session): one thread block per tile of ROWS rows; the tile's activations stay in shared
// memory (two ping-pong buffers of ROWS x max_width floats) across all layers; every thread
// computes output elements with a float32 dot product over the layer's input, reading weights
// through the read-only cache. The output is written once, converted to the requested type.
#include "mlp_fused.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>

namespace {

constexpr int kThreads = 256;
constexpr int kSmemBudget = 96 * 1024;  // bytes of dynamic shared memory we opt into

// ------------------------------------------------------------------ Philox4x32-10 + Box-Muller
// Same constants, counter/key layout and Box-Muller as triton.language.random and
// lsdm_fast/ops/philox.py: counter (lo32(off), hi32(off), 0, 0), key (lo32(seed), hi32(seed)).
__device__ __forceinline__ void philox4x32_10(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3, uint32_t k0,
                                              uint32_t k1) {
  const uint32_t kRoundA = 0xD2511F53u, kRoundB = 0xCD9E8D57u;
  const uint32_t kKeyA = 0x9E3779B9u, kKeyB = 0xBB67AE85u;
#pragma unroll
  for (int r = 0; r < 10; ++r) {
    const uint32_t prev_c0 = c0, prev_c2 = c2;
    const uint32_t hi_b = __umulhi(kRoundB, prev_c2), lo_b = kRoundB * prev_c2;
    const uint32_t hi_a = __umulhi(kRoundA, prev_c0), lo_a = kRoundA * prev_c0;
    c0 = hi_b ^ c1 ^ k0;
    c2 = hi_a ^ c3 ^ k1;
    c1 = lo_b;
    c3 = lo_a;
    k0 += kKeyA;
    k1 += kKeyB;
  }
}

__device__ __forceinline__ float uint_to_uniform(uint32_t x) {
  int32_t i = static_cast<int32_t>(x);  // bitcast
  if (i < 0) i = -i - 1;
  return static_cast<float>(i) * 4.6566127342e-10f;
}

// Normal value for global noise element `off` = (row_offset + i) * noise_dim + j. log/sqrt/cos are
// evaluated in double so that --use_fast_math cannot change them (matches the references to ~1e-7).
__device__ __forceinline__ float philox_randn(uint64_t seed, uint64_t off) {
  uint32_t c0 = static_cast<uint32_t>(off), c1 = static_cast<uint32_t>(off >> 32), c2 = 0u, c3 = 0u;
  philox4x32_10(c0, c1, c2, c3, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  float u1 = uint_to_uniform(c0);
  const float u2 = uint_to_uniform(c1);
  u1 = fmaxf(u1, 1.0e-7f);
  const float th = 6.283185307179586f * u2;  // float product, as in Triton
  const double r = sqrt(-2.0 * log(static_cast<double>(u1)));
  return static_cast<float>(r * cos(static_cast<double>(th)));
}

// ------------------------------------------------------------------ element conversion
__device__ __forceinline__ float load_as_float(const void* p, int dtype, int64_t idx) {
  switch (dtype) {
    case LSDM_BF16: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[idx]);
    case LSDM_F16: return __half2float(static_cast<const __half*>(p)[idx]);
    case LSDM_F64: return static_cast<float>(static_cast<const double*>(p)[idx]);
    default: return static_cast<const float*>(p)[idx];
  }
}

__device__ __forceinline__ void store_from_float(void* p, int dtype, int64_t idx, float v) {
  switch (dtype) {
    case LSDM_BF16: static_cast<__nv_bfloat16*>(p)[idx] = __float2bfloat16(v); break;
    case LSDM_F16: static_cast<__half*>(p)[idx] = __float2half(v); break;
    case LSDM_F64: static_cast<double*>(p)[idx] = static_cast<double>(v); break;
    case LSDM_U8: {
      const float c = fminf(fmaxf(v, 0.0f), 1.0f) * 255.0f;
      static_cast<uint8_t*>(p)[idx] = static_cast<uint8_t>(rintf(c));  // round half to even, like torch.round
      break;
    }
    default: static_cast<float*>(p)[idx] = v;
  }
}

__device__ __forceinline__ float activate(float v, int act, float slope) {
  switch (act) {
    case LSDM_ACT_LEAKY_RELU: return v >= 0.0f ? v : v * slope;
    case LSDM_ACT_RELU: return fmaxf(v, 0.0f);
    case LSDM_ACT_SILU: return v / (1.0f + expf(-v));
    case LSDM_ACT_SIGMOID: return 1.0f / (1.0f + expf(-v));
    default: return v;
  }
}

struct InputSpec {
  int mode;  // 0: encode (y), 1: generate with Philox noise, 2: generate with given eta
  const void* x;  // y or eta
  int x_dtype;
  int64_t x_stride;
  const void* cond;
  int cond_dtype;
  int64_t cond_stride;
  int noise_dim, cond_dim;
  uint64_t seed;
  int64_t row_offset;
};

__global__ void __launch_bounds__(kThreads)
fused_mlp_kernel(const LsdmMLPDesc mlp, const InputSpec in, int64_t n, void* out, int out_dtype, int rows_per_tile,
                 int max_width) {
  extern __shared__ float smem[];
  float* buf[2] = {smem, smem + static_cast<size_t>(rows_per_tile) * max_width};
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * rows_per_tile;
  const int rows = static_cast<int>(min(static_cast<int64_t>(rows_per_tile), n - row0));
  if (rows <= 0) return;

  // prologue: the tile's input rows -> buf[0]
  const int d0 = mlp.dims[0];
  for (int e = threadIdx.x; e < rows * d0; e += blockDim.x) {
    const int r = e / d0, c = e % d0;
    const int64_t gr = row0 + r;
    float v;
    if (in.mode == 0) {
      v = load_as_float(in.x, in.x_dtype, gr * in.x_stride + c);
    } else if (c < in.noise_dim) {
      v = in.mode == 1 ? philox_randn(in.seed, static_cast<uint64_t>(in.row_offset + gr) * in.noise_dim + c)
                       : load_as_float(in.x, in.x_dtype, gr * in.x_stride + c);
    } else {
      const int cc = c - in.noise_dim;
      if (in.cond_dtype == LSDM_I64 || in.cond_dtype == LSDM_I32) {
        const int64_t lab = in.cond_dtype == LSDM_I64 ? static_cast<const int64_t*>(in.cond)[gr * in.cond_stride]
                                                       : static_cast<int64_t>(static_cast<const int32_t*>(in.cond)[gr * in.cond_stride]);
        v = (lab == cc) ? 1.0f : 0.0f;
      } else {
        v = load_as_float(in.cond, in.cond_dtype, gr * in.cond_stride + cc);
      }
    }
    buf[0][r * max_width + c] = v;
  }
  __syncthreads();

  int cur = 0;
  for (int l = 0; l < mlp.num_layers; ++l) {
    const int K = mlp.dims[l], N = mlp.dims[l + 1];
    const float* __restrict__ W = mlp.weights[l];
    const float* __restrict__ B = mlp.biases[l];
    const int act = mlp.act[l];
    const float slope = mlp.slope[l];
    const bool last = (l == mlp.num_layers - 1);
    const float* src = buf[cur];
    float* dst = buf[cur ^ 1];
    // consecutive threads take consecutive outputs n of the same row: weight rows are read by
    // neighbouring threads, the activation row is broadcast from shared memory
    for (int e = threadIdx.x; e < rows * N; e += blockDim.x) {
      const int r = e / N, o = e % N;
      const float* a = src + static_cast<size_t>(r) * max_width;
      const float* w = W + static_cast<size_t>(o) * K;
      float acc = __ldg(B + o);
      for (int k = 0; k < K; ++k) acc = fmaf(a[k], __ldg(w + k), acc);
      acc = activate(acc, act, slope);
      if (last) {
        store_from_float(out, out_dtype, (row0 + r) * static_cast<int64_t>(N) + o, acc);
      } else {
        dst[static_cast<size_t>(r) * max_width + o] = acc;
      }
    }
    __syncthreads();
    cur ^= 1;
  }
}

__global__ void philox_normal_kernel(uint64_t seed, int64_t row_offset, int64_t rows, int cols, float* out) {
  const int64_t total = rows * cols;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e / cols, j = e % cols;
    out[e] = philox_randn(seed, static_cast<uint64_t>(row_offset + i) * cols + j);
  }
}

cudaError_t launch(const LsdmMLPDesc& mlp, const InputSpec& in, int64_t n, void* out, int out_dtype,
                   cudaStream_t stream) {
  if (mlp.num_layers < 1 || mlp.num_layers > LSDM_MLP_MAX_LAYERS) return cudaErrorInvalidValue;
  if (n <= 0) return cudaSuccess;
  int max_width = 0;
  for (int l = 0; l <= mlp.num_layers; ++l) {
    if (mlp.dims[l] <= 0) return cudaErrorInvalidValue;
    max_width = max(max_width, mlp.dims[l]);
  }
  const size_t row_bytes = 2 * sizeof(float) * static_cast<size_t>(max_width);
  int rows_per_tile = static_cast<int>(kSmemBudget / row_bytes);
  if (rows_per_tile < 1) return cudaErrorInvalidValue;  // widths above 12288 floats per row
  if (rows_per_tile > 32) rows_per_tile = 32;
  const size_t smem = row_bytes * rows_per_tile;
  cudaError_t err = cudaFuncSetAttribute(fused_mlp_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  const int64_t tiles = (n + rows_per_tile - 1) / rows_per_tile;
  if (tiles > 0x7fffffffLL) return cudaErrorInvalidValue;
  fused_mlp_kernel<<<static_cast<unsigned>(tiles), kThreads, smem, stream>>>(mlp, in, n, out, out_dtype,
                                                                            rows_per_tile, max_width);
  return cudaGetLastError();
}

}  // namespace

cudaError_t lsdm_mlp_forward(const LsdmMLPDesc& mlp, const void* y, int y_dtype, int64_t y_stride, int64_t n,
                             void* out, int out_dtype, cudaStream_t stream) {
  InputSpec in{};
  in.mode = 0;
  in.x = y;
  in.x_dtype = y_dtype;
  in.x_stride = y_stride;
  return launch(mlp, in, n, out, out_dtype, stream);
}

cudaError_t lsdm_generate(const LsdmMLPDesc& mlp, int noise_dim, int cond_dim, const void* cond, int cond_dtype,
                          int64_t cond_stride, const void* eta, int eta_dtype, int64_t eta_stride, uint64_t seed,
                          int64_t row_offset, int64_t n, void* out, int out_dtype, cudaStream_t stream) {
  if (noise_dim < 0 || cond_dim < 0 || noise_dim + cond_dim != mlp.dims[0]) return cudaErrorInvalidValue;
  InputSpec in{};
  in.mode = eta ? 2 : 1;
  in.x = eta;
  in.x_dtype = eta_dtype;
  in.x_stride = eta_stride;
  in.cond = cond;
  in.cond_dtype = cond_dtype;
  in.cond_stride = cond_stride;
  in.noise_dim = noise_dim;
  in.cond_dim = cond_dim;
  in.seed = seed;
  in.row_offset = row_offset;
  return launch(mlp, in, n, out, out_dtype, stream);
}

cudaError_t lsdm_philox_normal(uint64_t seed, int64_t row_offset, int64_t rows, int cols, float* out,
                               cudaStream_t stream) {
  const int64_t total = rows * cols;
  if (total <= 0) return cudaSuccess;
  const int64_t blocks64 = (total + 255) / 256;
  const unsigned blocks = static_cast<unsigned>(blocks64 < 65535 ? blocks64 : 65535);
  philox_normal_kernel<<<blocks, 256, 0, stream>>>(seed, row_offset, rows, cols, out);
  return cudaGetLastError();
}
