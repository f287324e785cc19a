// Fused MLP forward / one-step generation on the tensor cores: see mlp_fused.cuh.
#include "mlp_fused.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>

#include "warp_mma.cuh"

namespace {

using lsdm::cuda::allow_max_dynamic_smem;
using lsdm::cuda::cdiv;
using lsdm::cuda::cp_async;
using lsdm::cuda::cp_async_commit;
using lsdm::cuda::cp_async_wait;
using lsdm::cuda::MathMode;
using lsdm::cuda::patch_ld;
using lsdm::cuda::WarpTile;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kBN = 128;       // output columns per chunk
constexpr int kBK = 64;        // k per weight tile; widths are packed to 32, a last half tile is fine
constexpr int kMaxStages = 3;  // weight tiles in flight: 3 where shared memory allows, else 2

__host__ __device__ inline int pad32(int n) { return (n + 31) / 32 * 32; }

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

// Normal value for global noise element `off` = (row_offset + i) * noise_dim + j, with the float32
// operation sequence of lsdm_fast.ops.philox (sqrt(-2 log u1) * cos(2 pi u2), every step rounded
// to float32) and each step correctly rounded: log and cos in double, then rounded once;
// __fsqrt_rn, which --use_fast_math cannot turn into an approximation. A reference whose logf /
// cosf are correctly rounded for the value gets the same bits. cos(th) as cospi(th / pi): th is in
// [0, 2 pi), where both are accurate to a few double ulps, and cospi has no large-argument
// reduction (cos's needs a local array: a stack frame in every kernel that draws noise).
__device__ __forceinline__ float philox_randn(uint64_t seed, uint64_t off) {
  uint32_t c0 = static_cast<uint32_t>(off), c1 = static_cast<uint32_t>(off >> 32), c2 = 0u, c3 = 0u;
  philox4x32_10(c0, c1, c2, c3, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  float u1 = uint_to_uniform(c0);
  const float u2 = uint_to_uniform(c1);
  u1 = fmaxf(u1, 1.0e-7f);
  const float th = 6.283185307179586f * u2;  // float product, as in Triton and the reference
  const float log_u1 = static_cast<float>(log(static_cast<double>(u1)));
  const float r = __fsqrt_rn(-2.0f * log_u1);
  const float cos_th = static_cast<float>(cospi(static_cast<double>(th) * 0.31830988618379067));
  return r * cos_th;
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
      // rintf rounds half to even under the default rounding mode (never changed here), as
      // torch.round does in the reference: 0.5 / 255 steps land on even levels in every backend.
      static_cast<uint8_t*>(p)[idx] = static_cast<uint8_t>(rintf(c));
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

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16(v);
}
template <>
__device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half(v);
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

// Element (row, c) of the first layer's input.
__device__ __forceinline__ float input_value(const InputSpec& in, int64_t row, int c) {
  if (in.mode == 0) return load_as_float(in.x, in.x_dtype, row * in.x_stride + c);
  if (c < in.noise_dim) {
    return in.mode == 1 ? philox_randn(in.seed, static_cast<uint64_t>(in.row_offset + row) * in.noise_dim + c)
                        : load_as_float(in.x, in.x_dtype, row * in.x_stride + c);
  }
  const int cc = c - in.noise_dim;
  if (in.cond_dtype == LSDM_I64 || in.cond_dtype == LSDM_I32) {
    const int64_t lab = in.cond_dtype == LSDM_I64 ? static_cast<const int64_t*>(in.cond)[row * in.cond_stride]
                                                   : static_cast<const int32_t*>(in.cond)[row * in.cond_stride];
    return lab == cc ? 1.0f : 0.0f;
  }
  return load_as_float(in.cond, in.cond_dtype, row * in.cond_stride + cc);
}

struct FusedArgs {
  LsdmMLPDesc mlp;
  InputSpec in;
  int64_t n;
  void* out;
  int out_dtype;
  int ld0, ld1;  // row strides (elements) of the two activation buffers
  int stages;    // 2 or 3
};

// Warps over a BM x 128 chunk: WM x WN warps of FM x FN 16x16 sub-tiles.
template <int BM>
struct TileShape {
  static constexpr int kWM = BM >= 128 ? 4 : (BM >= 32 ? 2 : 1);
  static constexpr int kWN = kWarps / kWM;
  static constexpr int kFM = BM / kWM / 16, kFN = kBN / kWN / 16;
  static_assert(kFM >= 1 && kFN >= 1 && kWM * kFM * 16 == BM, "tile shape");
};

template <typename T, int BM>
struct FusedSmem {
  static constexpr int kPad = 16 / static_cast<int>(sizeof(T));  // 16-byte skew per smem row
  static constexpr int kLdw = kBK + kPad;
  static constexpr int kStageElems = kBN * kLdw;
  static constexpr int kPatchBytes = kWarps * 16 * patch_ld<float>() * static_cast<int>(sizeof(float));
  static int64_t bytes(int ld0, int ld1, int stages) {
    return (static_cast<int64_t>(BM) * (ld0 + ld1) + stages * kStageElems) * static_cast<int64_t>(sizeof(T)) +
           kPatchBytes;
  }
};

// Issues the weight tiles (kBN rows x kBK) of every layer, chunk and k tile in compute order, one
// per call, so that the pipeline runs on across chunk and layer boundaries. Each thread copies
// the same kChunks 16-byte pieces of every tile.
template <typename T>
struct WeightStream {
  static constexpr int kV = 16 / static_cast<int>(sizeof(T));  // elements per 16-byte piece
  static constexpr int kCV = kBK / kV;                          // pieces per tile row
  static constexpr int kChunks = kBN * kCV / kThreads;
  int layer = -1, chunk = 0, kt = 0;
  int kp = 0, np = 0, ktiles = 0, nchunks = 0;
  const T* w = nullptr;

  __device__ __forceinline__ void begin(const LsdmMLPDesc& m, int l) {
    layer = l;
    chunk = kt = 0;
    if (l < m.num_layers) {
      kp = pad32(m.dims[l]);
      np = pad32(m.dims[l + 1]);
      ktiles = cdiv(kp, kBK);
      nchunks = cdiv(np, kBN);
      w = static_cast<const T*>(m.weights[l]);
    }
  }

  __device__ __forceinline__ void issue(const LsdmMLPDesc& m, T* stage, int ldw) {
    if (layer >= m.num_layers) return;
#pragma unroll
    for (int it = 0; it < kChunks; ++it) {
      const int i = threadIdx.x + it * kThreads;
      const int r = i / kCV, cv = i % kCV;
      const int n = chunk * kBN + r, k = kt * kBK + cv * kV;
      const bool ok = n < np && k < kp;  // past the packed width or depth: zeros
      cp_async<16>(stage + r * ldw + cv * kV, ok ? w + static_cast<int64_t>(n) * kp + k : w, ok ? 16 : 0);
    }
    if (++kt == ktiles) {
      kt = 0;
      if (++chunk == nchunks) begin(m, layer + 1);
    }
  }
};

// One block per BM-row tile, every layer (estimates in mlp_fused.cuh: the weights once per block
// from L2, mma.sync-bound for the MNIST models).
template <typename T, MathMode M, int BM>
__global__ void __launch_bounds__(kThreads, 1) fused_mlp_kernel(const __grid_constant__ FusedArgs a) {
  using Shape = TileShape<BM>;
  using Smem = FusedSmem<T, BM>;
  using Tile = WarpTile<M, T, Shape::kFM, Shape::kFN, true, false>;
  constexpr int kPld = patch_ld<float>();
  LSDM_DYNAMIC_SMEM(smem_raw);
  const LsdmMLPDesc& mlp = a.mlp;
  T* const buf0 = reinterpret_cast<T*>(smem_raw);
  T* const buf1 = buf0 + BM * a.ld0;
  T* const stages = buf1 + BM * a.ld1;
  const int n_stages = a.stages;
  float* const patch = reinterpret_cast<float*>(stages + n_stages * Smem::kStageElems) + (threadIdx.x / 32) * 16 * kPld;
  const int L = mlp.num_layers;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wm = warp / Shape::kWN, wn = warp % Shape::kWN;

  WeightStream<T> weights;
  weights.begin(mlp, 0);
  int load_stage = 0;
  for (; load_stage < n_stages - 1; ++load_stage) {
    weights.issue(mlp, stages + load_stage * Smem::kStageElems, Smem::kLdw);
    cp_async_commit();
  }

  {  // the tile's input rows -> buf0, zeros past the input width and the last row
    const int kp0 = pad32(mlp.dims[0]);
    for (int e = threadIdx.x; e < BM * kp0; e += kThreads) {
      const int r = e / kp0, c = e % kp0;
      const int64_t row = row0 + r;
      const float v = row < a.n && c < mlp.dims[0] ? input_value(a.in, row, c) : 0.0f;
      buf0[r * a.ld0 + c] = from_float<T>(v);
    }
  }

  Tile tile;
  tile.zero();
  int stage = 0;
  for (int l = 0; l < L; ++l) {
    const int kp = pad32(mlp.dims[l]), ktiles = cdiv(kp, kBK), np = pad32(mlp.dims[l + 1]), N = mlp.dims[l + 1];
    const bool odd = l & 1, last = l == L - 1;
    const int lda = odd ? a.ld1 : a.ld0, ldd = odd ? a.ld0 : a.ld1;
    const T* const A = (odd ? buf1 : buf0) + wm * Shape::kFM * 16 * lda;
    T* const dst = odd ? buf0 : buf1;
    const float* const bias = mlp.biases[l];
    const int act = mlp.act[l];
    const float slope = mlp.slope[l];
    for (int chunk = 0; chunk * kBN < np; ++chunk) {
      const int n_warp = chunk * kBN + wn * Shape::kFN * 16;  // the warp's first column
      for (int kt = 0; kt < ktiles; ++kt) {
        if (n_stages == 3) cp_async_wait<1>();
        else cp_async_wait<0>();
        __syncthreads();  // weight tile visible, the previous layer's output too; stage (t-1) free
        weights.issue(mlp, stages + load_stage * Smem::kStageElems, Smem::kLdw);
        cp_async_commit();
        load_stage = load_stage == n_stages - 1 ? 0 : load_stage + 1;
        if (n_warp < np) {  // warp-uniform: columns past the layer skip the MMAs
          const T* B = stages + stage * Smem::kStageElems + wn * Shape::kFN * 16 * Smem::kLdw;
          // One straight block per tile (the address arithmetic of the fragment loads is then
          // shared by all k steps); the last tile of a 32-but-not-64 multiple is half full.
          const T* a_tile = A + kt * kBK;
          if (kp - kt * kBK >= kBK) {
#pragma unroll
            for (int kk = 0; kk < kBK; kk += Tile::kStep) tile.step(a_tile + kk, lda, B + kk, Smem::kLdw);
          } else {
#pragma unroll
            for (int kk = 0; kk < kBK / 2; kk += Tile::kStep) tile.step(a_tile + kk, lda, B + kk, Smem::kLdw);
          }
        }
        stage = stage == n_stages - 1 ? 0 : stage + 1;
      }
      // chunk done: bias, activation, store (the next layer's buffer, or the output)
#pragma unroll
      for (int i = 0; i < Shape::kFM; ++i) {
#pragma unroll
        for (int j = 0; j < Shape::kFN; ++j) {
          const int mb = wm * Shape::kFM * 16 + 16 * i;
          const int nb = n_warp + 16 * j;
          if (nb >= np) continue;  // warp-uniform
          tile.stage(i, j, patch, kPld);
          __syncwarp();
#pragma unroll
          for (int q = 0; q < 8; ++q) {
            const int e = lane + 32 * q;
            const int m = mb + (e >> 4), n = nb + (e & 15);
            const float v = activate(patch[(e >> 4) * kPld + (e & 15)] + bias[n], act, slope);
            if (last) {
              const int64_t row = row0 + m;
              if (row < a.n && n < N) store_from_float(a.out, a.out_dtype, row * N + n, v);
            } else {
              dst[m * ldd + n] = from_float<T>(n < N ? v : 0.0f);  // the next layer's k padding is zero
            }
          }
          __syncwarp();
        }
      }
      tile.zero();
    }
  }
}

// Noise alone, for tests (4 B written and ~100 integer ops per element: compute-bound, microseconds).
__global__ void philox_normal_kernel(uint64_t seed, int64_t row_offset, int64_t rows, int cols, float* out) {
  const int64_t total = rows * cols;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e / cols, j = e % cols;
    out[e] = philox_randn(seed, static_cast<uint64_t>(row_offset + i) * cols + j);
  }
}

// Activation buffer widths: buffer 0 holds the inputs of layers 0, 2, 4, ..., buffer 1 of
// layers 1, 3, ...; each row padded by 16 bytes against bank conflicts.
void buffer_strides(const LsdmMLPDesc& mlp, int elem_bytes, int* ld0, int* ld1) {
  int w[2] = {0, 0};
  for (int l = 0; l < mlp.num_layers; ++l) w[l & 1] = pad32(mlp.dims[l]) > w[l & 1] ? pad32(mlp.dims[l]) : w[l & 1];
  const int pad = 16 / elem_bytes;
  *ld0 = w[0] + pad;
  *ld1 = w[1] > 0 ? w[1] + pad : 0;
}

// Rows per block and pipeline depth: the most rows that fit (fewer weight re-reads from L2),
// with 3 weight stages where they fit too, else 2. rows = 0: even 16 rows do not fit.
struct TileChoice {
  int rows, stages;
};

template <typename T>
TileChoice tile_choice(const LsdmMLPDesc& mlp, int max_smem) {
  int ld0, ld1;
  buffer_strides(mlp, sizeof(T), &ld0, &ld1);
  for (int stages = kMaxStages; stages >= 2; --stages) {
    if (FusedSmem<T, 128>::bytes(ld0, ld1, stages) <= max_smem) return {128, stages};
  }
  for (int stages = kMaxStages; stages >= 2; --stages) {
    if (FusedSmem<T, 64>::bytes(ld0, ld1, stages) <= max_smem) return {64, stages};
  }
  for (int stages = kMaxStages; stages >= 2; --stages) {
    if (FusedSmem<T, 32>::bytes(ld0, ld1, stages) <= max_smem) return {32, stages};
  }
  for (int stages = kMaxStages; stages >= 2; --stages) {
    if (FusedSmem<T, 16>::bytes(ld0, ld1, stages) <= max_smem) return {16, stages};
  }
  return {0, 0};
}

template <typename T, MathMode M, int BM>
cudaError_t launch_rows(const FusedArgs& a, cudaStream_t stream) {
  const int64_t smem = FusedSmem<T, BM>::bytes(a.ld0, a.ld1, a.stages);
  constexpr auto kernel = fused_mlp_kernel<T, M, BM>;
  const cudaError_t err = allow_max_dynamic_smem<kernel>();
  if (err != cudaSuccess) return err;
  const int64_t tiles = (a.n + BM - 1) / BM;
  if (tiles > 0x7fffffffLL) return cudaErrorInvalidValue;
  LSDM_LAUNCH(kernel, static_cast<unsigned>(tiles), kThreads, static_cast<size_t>(smem), stream, a);
  return cudaGetLastError();
}

template <typename T, MathMode M>
cudaError_t launch_math(FusedArgs& a, cudaStream_t stream) {
  int dev = 0, max_smem = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  if (err != cudaSuccess) return err;
  buffer_strides(a.mlp, sizeof(T), &a.ld0, &a.ld1);
  const TileChoice tile = tile_choice<T>(a.mlp, max_smem);
  a.stages = tile.stages;
  switch (tile.rows) {
    case 128: return launch_rows<T, M, 128>(a, stream);
    case 64: return launch_rows<T, M, 64>(a, stream);
    case 32: return launch_rows<T, M, 32>(a, stream);
    case 16: return launch_rows<T, M, 16>(a, stream);
    default: return cudaErrorInvalidConfiguration;  // too wide: see lsdm_mlp_tile_rows
  }
}

cudaError_t launch(const LsdmMLPDesc& mlp, const InputSpec& in, int64_t n, void* out, int out_dtype,
                   cudaStream_t stream) {
  if (mlp.num_layers < 1 || mlp.num_layers > LSDM_MLP_MAX_LAYERS) return cudaErrorInvalidValue;
  for (int l = 0; l <= mlp.num_layers; ++l)
    if (mlp.dims[l] <= 0) return cudaErrorInvalidValue;
  for (int l = 0; l < mlp.num_layers; ++l)
    if (reinterpret_cast<uintptr_t>(mlp.weights[l]) % 16 != 0 || mlp.biases[l] == nullptr) return cudaErrorInvalidValue;
  if (n <= 0) return cudaSuccess;
  FusedArgs a{};
  a.mlp = mlp;
  a.in = in;
  a.n = n;
  a.out = out;
  a.out_dtype = out_dtype;
  switch (mlp.math) {
    case LSDM_MATH_TF32: return launch_math<float, MathMode::kTf32>(a, stream);
    case LSDM_MATH_BF16: return launch_math<__nv_bfloat16, MathMode::kHalf>(a, stream);
    case LSDM_MATH_F16: return launch_math<__half, MathMode::kHalf>(a, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

int lsdm_mlp_tile_rows(const LsdmMLPDesc& mlp, int max_smem) {
  if (mlp.num_layers < 1 || mlp.num_layers > LSDM_MLP_MAX_LAYERS) return 0;
  switch (mlp.math) {
    case LSDM_MATH_TF32: return tile_choice<float>(mlp, max_smem).rows;
    case LSDM_MATH_BF16: return tile_choice<__nv_bfloat16>(mlp, max_smem).rows;
    case LSDM_MATH_F16: return tile_choice<__half>(mlp, max_smem).rows;
    default: return 0;
  }
}

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
  LSDM_LAUNCH(philox_normal_kernel, blocks, 256, 0, stream, seed, row_offset, rows, cols, out);
  return cudaGetLastError();
}
