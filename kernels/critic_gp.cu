// Fused WGAN-GP critic step: see critic_gp.cuh for the maths, the launches and the scratch layout.
#include "critic_gp.cuh"

#include <cstdint>
#include <type_traits>

#include "warp_mma.cuh"

namespace lsdm {
namespace cuda {
namespace {

constexpr int kThreads = 256;  // the row kernels: 8 warps
constexpr int kWarps = kThreads / kWarpSize;
constexpr int kBM = 128, kBN = 128;  // GEMM block tile
constexpr int kStages = 3;           // cp.async pipeline depth
// A row-major global matrix: element (r, c) at ptr[r * ld + c].
template <typename T>
struct View {
  T* ptr = nullptr;
  int64_t ld = 0;

  __host__ __device__ T* at(int64_t r, int64_t c) const { return ptr + r * ld + c; }
};

template <typename T>
View<T> make_view(T* ptr, int64_t ld) {
  return View<T>{ptr, ld};
}

// What cp.async of 16 bytes needs of every row of an operand.
template <typename T>
bool rows_aligned(const T* ptr, int64_t ld) {
  return reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && (ld * static_cast<int64_t>(sizeof(T))) % 16 == 0;
}

// ------------------------------------------------------------------------------ GEMM

// C (m x n) = A (m x k) B (k x n) over the contraction rows [split * k_chunk, ...), then
//   v = C (+ bias[n]) (-> leaky) (* s'(gate[m, n])) stored to out (+ split * split_stride).
// Every operand's rows are 16-byte aligned (rows_aligned; checked by launch_gemm).
template <typename T>
struct GemmProblem {
  View<const T> a, b;  // layouts are the kernel's template flags
  int64_t m = 0, n = 0, k = 0;
  int64_t k_chunk = 0;
  int64_t split_stride = 0;
  View<T> out;               // element (m, n) at out.at(m, n - col0); columns below col0 dropped
  int64_t col0 = 0;
  View<const T> gate;        // ptr null: no gate
  const T* bias = nullptr;   // null: no bias
  bool leaky = false;
  T slope = T(0);
};

template <typename T>
struct GemmBatch {  // problems of one launch (the weight gradients of all layers), blockIdx.z
  GemmProblem<T> p[2 * kCriticMaxLayers];
  int count = 0;
  int splits = 1;
};

// float: 4 warps of 64x64 (the accumulators take 128 registers), two blocks per SM.
// double: 8 warps of 64x32 (128 double accumulators would not fit), one block per SM.
template <typename T>
struct GemmShape {
  static constexpr bool kFloat = sizeof(T) == 4;
  static constexpr int kWarpsM = 2, kWarpsN = kFloat ? 2 : 4;
  static constexpr int kThreads = kWarpsM * kWarpsN * kWarpSize;
  static constexpr int kFM = kBM / kWarpsM / 16, kFN = kBN / kWarpsN / 16;
  static constexpr int kMinBlocks = kFloat ? 2 : 1;
  static constexpr int kBK = kFloat ? 32 : 16;
};

template <typename T, bool A_ROW, bool B_ROW>
struct GemmSmem {
  static constexpr int kBK = GemmShape<T>::kBK;
  static constexpr int kPad = 16 / static_cast<int>(sizeof(T));  // 16-byte skew per smem row
  static constexpr int kAld = (A_ROW ? kBK : kBM) + kPad;
  static constexpr int kBld = (B_ROW ? kBN : kBK) + kPad;
  static constexpr int kAElems = round_up((A_ROW ? kBM : kBK) * kAld, 128 / static_cast<int>(sizeof(T)));
  static constexpr int kBElems = round_up((B_ROW ? kBK : kBN) * kBld, 128 / static_cast<int>(sizeof(T)));
  static constexpr int kStageElems = kAElems + kBElems;
  static constexpr int kBytes = kStages * kStageElems * static_cast<int>(sizeof(T));
};

// Copies the R x C tile at (r0, c0) of v into shared memory (row stride lds), zero-filling
// everything outside [0, r_lim) x [0, c_lim). Consecutive threads take consecutive 16-byte
// chunks of a row: coalesced. c0 is a multiple of 16 bytes' worth of elements.
template <typename T, int R, int C, int kThreads>
__device__ __forceinline__ void load_tile(T* s, int lds, const View<const T>& v, int64_t r0, int64_t c0,
                                          int64_t r_lim, int64_t c_lim) {
  constexpr int kV = 16 / static_cast<int>(sizeof(T));
  constexpr int kCV = C / kV;
  static_assert(R * kCV % kThreads == 0, "whole 16-byte chunks per thread");
#pragma unroll
  for (int it = 0; it < R * kCV / kThreads; ++it) {
    const int i = threadIdx.x + it * kThreads;
    const int r = i / kCV, cv = i % kCV;
    const int64_t gr = r0 + r, gc = c0 + cv * kV;
    int64_t n = gr < r_lim ? c_lim - gc : 0;
    n = n < 0 ? 0 : (n > kV ? kV : n);
    cp_async<16>(s + r * lds + cv * kV, n > 0 ? v.at(gr, gc) : v.ptr, static_cast<int>(n * sizeof(T)));
  }
}

// The tile GEMM of every layer pass and of the weight gradients (see critic_gp.cuh for its
// estimates: 128 x 128 tiles read 32 FLOP per byte from L2, so at 7-10 TB/s L2 -> SM a TF32
// tile GEMM is L2-bound before it is matrix-bound, and mma.sync caps it lower still).
template <typename T, MathMode M, bool A_ROW, bool B_ROW>
__global__ void __launch_bounds__(GemmShape<T>::kThreads, GemmShape<T>::kMinBlocks)
    critic_gemm_kernel(const __grid_constant__ GemmBatch<T> batch) {
  using Shape = GemmShape<T>;
  using Cfg = GemmSmem<T, A_ROW, B_ROW>;
  using Tile = WarpTile<M, T, Shape::kFM, Shape::kFN, A_ROW, B_ROW>;
  using Acc = typename MathTraits<M, T>::Acc;
  constexpr int kBK = Cfg::kBK, kFM = Shape::kFM, kFN = Shape::kFN, kNT = Shape::kThreads;
  LSDM_DYNAMIC_SMEM(smem_raw);
  T* smem = reinterpret_cast<T*>(smem_raw);

  const int split = static_cast<int>(blockIdx.z) % batch.splits;
  const GemmProblem<T>& p = batch.p[blockIdx.z / batch.splits];
  // Column tiles fastest (blockIdx.x): the blocks of one row tile run together, so the A rows
  // they share come from HBM once and from L2 for the other column tiles (with row tiles fastest
  // every column tile streamed the whole of A again: 4x at width 512).
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kBM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kBN;
  if (m0 >= p.m || n0 >= p.n) return;  // a smaller problem of the batch
  const int64_t k_begin = split * p.k_chunk;
  const int64_t k_end = p.k < k_begin + p.k_chunk ? p.k : k_begin + p.k_chunk;
  const int ktiles = k_end > k_begin ? static_cast<int>((k_end - k_begin + kBK - 1) / kBK) : 0;

  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int wm = warp / Shape::kWarpsN, wn = warp % Shape::kWarpsN;
  const bool live = m0 + wm * kFM * 16 < p.m && n0 + wn * kFN * 16 < p.n;  // warp-uniform

  auto load = [&](int stage, int kt) {
    T* as = smem + stage * Cfg::kStageElems;
    T* bs = as + Cfg::kAElems;
    const int64_t k0 = k_begin + static_cast<int64_t>(kt) * kBK;
    if constexpr (A_ROW) load_tile<T, kBM, kBK, kNT>(as, Cfg::kAld, p.a, m0, k0, p.m, k_end);
    else load_tile<T, kBK, kBM, kNT>(as, Cfg::kAld, p.a, k0, m0, k_end, p.m);
    if constexpr (B_ROW) load_tile<T, kBK, kBN, kNT>(bs, Cfg::kBld, p.b, k0, n0, k_end, p.n);
    else load_tile<T, kBN, kBK, kNT>(bs, Cfg::kBld, p.b, n0, k0, p.n, k_end);
  };

  Tile tile;
  tile.zero();
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < ktiles) load(s, s);
    cp_async_commit();  // empty groups keep the wait counts uniform
  }
  for (int kt = 0; kt < ktiles; ++kt) {
    cp_async_wait<kStages - 2>();
    __syncthreads();  // tile kt visible to all; stage (kt - 1) % kStages free for reuse
    if (kt + kStages - 1 < ktiles) load((kt + kStages - 1) % kStages, kt + kStages - 1);
    cp_async_commit();
    if (live) {
      const T* as = smem + (kt % kStages) * Cfg::kStageElems;
      const T* bs = as + Cfg::kAElems;
#pragma unroll 1
      for (int kk = 0; kk < kBK; kk += Tile::kStep) {
        const T* a = A_ROW ? as + wm * kFM * 16 * Cfg::kAld + kk : as + kk * Cfg::kAld + wm * kFM * 16;
        const T* b = B_ROW ? bs + kk * Cfg::kBld + wn * kFN * 16 : bs + wn * kFN * 16 * Cfg::kBld + kk;
        tile.step(a, Cfg::kAld, b, Cfg::kBld);
      }
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // the stages become the epilogue patches

  constexpr int kPld = patch_ld<Acc>();
  Acc* patch = reinterpret_cast<Acc*>(smem_raw) + warp * 16 * kPld;
  T* out = p.out.ptr + split * p.split_stride;
#pragma unroll
  for (int i = 0; i < kFM; ++i) {
#pragma unroll
    for (int j = 0; j < kFN; ++j) {
      const int64_t mb = m0 + wm * kFM * 16 + 16 * i;
      const int64_t nb = n0 + wn * kFN * 16 + 16 * j;
      if (mb >= p.m || nb >= p.n) continue;  // warp-uniform
      tile.stage(i, j, patch, kPld);
      __syncwarp();
#pragma unroll
      for (int t = 0; t < 8; ++t) {
        const int e = lane + kWarpSize * t;
        const int r = e >> 4, c = e & 15;
        const int64_t m = mb + r, n = nb + c;
        if (m < p.m && n < p.n) {
          T v = static_cast<T>(patch[r * kPld + c]);
          if (p.bias != nullptr) v += p.bias[n];
          if (p.leaky) v = v > T(0) ? v : v * p.slope;
          if (p.gate.ptr != nullptr) v *= *p.gate.at(m, n) > T(0) ? T(1) : p.slope;
          if (n >= p.col0) out[m * p.out.ld + (n - p.col0)] = v;
        }
      }
      __syncwarp();
    }
  }
}

enum class Operands { kForward, kBackward, kWgrad };  // (A row, B col), (A row, B row), (A col, B row)

template <typename T, MathMode M, bool A_ROW, bool B_ROW>
cudaError_t launch_gemm_as(const GemmBatch<T>& batch, dim3 grid, cudaStream_t stream) {
  constexpr int kBytes = GemmSmem<T, A_ROW, B_ROW>::kBytes;
  constexpr auto kernel = critic_gemm_kernel<T, M, A_ROW, B_ROW>;
  const cudaError_t err = allow_max_dynamic_smem<kernel>();
  if (err != cudaSuccess) return err;
  LSDM_LAUNCH(kernel, grid, GemmShape<T>::kThreads, kBytes, stream, batch);
  return cudaGetLastError();
}

template <typename T, bool A_ROW, bool B_ROW>
cudaError_t launch_gemm_layout(MathMode mode, const GemmBatch<T>& batch, dim3 grid, cudaStream_t stream) {
  if constexpr (std::is_same<T, double>::value) {
    return launch_gemm_as<T, MathMode::kSimt, A_ROW, B_ROW>(batch, grid, stream);
  } else {
    switch (mode) {
      case MathMode::kTf32: return launch_gemm_as<T, MathMode::kTf32, A_ROW, B_ROW>(batch, grid, stream);
      case MathMode::kTf32x3: return launch_gemm_as<T, MathMode::kTf32x3, A_ROW, B_ROW>(batch, grid, stream);
      default: return launch_gemm_as<T, MathMode::kSimt, A_ROW, B_ROW>(batch, grid, stream);
    }
  }
}

template <typename T>
cudaError_t launch_gemm(const GemmBatch<T>& batch, Operands ops, MathMode mode, cudaStream_t stream) {
  int64_t mt = 0, nt = 0;
  for (int i = 0; i < batch.count; ++i) {
    const int64_t a = (batch.p[i].m + kBM - 1) / kBM, b = (batch.p[i].n + kBN - 1) / kBN;
    mt = a > mt ? a : mt;
    nt = b > nt ? b : nt;
  }
  if (mt == 0 || nt == 0) return cudaSuccess;  // nothing to compute (a z block of width 0)
  for (int i = 0; i < batch.count; ++i)
    if (!rows_aligned(batch.p[i].a.ptr, batch.p[i].a.ld) || !rows_aligned(batch.p[i].b.ptr, batch.p[i].b.ld))
      return cudaErrorInvalidValue;
  if (nt > 65535 || static_cast<int64_t>(batch.count) * batch.splits > 65535) return cudaErrorInvalidConfiguration;
  // gridDim.y (row tiles) stops at 65535: more rows (3B > 8.4M) go in several launches
  constexpr int64_t kMaxRowTiles = 65535;
  if (mt > kMaxRowTiles && ops == Operands::kWgrad) return cudaErrorInvalidConfiguration;  // m = a width
  for (int64_t t0 = 0; t0 < mt; t0 += kMaxRowTiles) {
    GemmBatch<T> b = batch;
    const int64_t r0 = t0 * kBM;
    for (int i = 0; i < b.count; ++i) {  // A row-major: the chunk's rows of A, out and gate
      GemmProblem<T>& p = b.p[i];
      if (p.m <= r0) {
        p.m = 0;
        continue;
      }
      p.m -= r0;
      p.a.ptr += r0 * p.a.ld;
      p.out.ptr += r0 * p.out.ld;
      if (p.gate.ptr != nullptr) p.gate.ptr += r0 * p.gate.ld;
    }
    const int64_t rows = mt - t0 < kMaxRowTiles ? mt - t0 : kMaxRowTiles;
    const dim3 grid(static_cast<unsigned>(nt), static_cast<unsigned>(rows), static_cast<unsigned>(b.count * b.splits));
    cudaError_t err;
    switch (ops) {
      case Operands::kForward: err = launch_gemm_layout<T, true, false>(mode, b, grid, stream); break;
      case Operands::kBackward: err = launch_gemm_layout<T, true, true>(mode, b, grid, stream); break;
      default: err = launch_gemm_layout<T, false, true>(mode, b, grid, stream);
    }
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

template <typename T>
GemmBatch<T> single(const GemmProblem<T>& p) {
  GemmBatch<T> b;
  b.p[0] = p;
  b.count = 1;
  b.splits = 1;
  return b;
}

// ------------------------------------------------------------------------------ row kernels

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {  // butterfly: every lane ends with the same sum
#pragma unroll
  for (int off = kWarpSize / 2; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Sum of v over the block (all threads call it; all get the result); fixed order.
template <typename T>
__device__ T block_sum(T v) {
  __shared__ T part[kWarps];
  v = warp_sum(v);
  __syncthreads();  // part may still be read by a previous call
  if (threadIdx.x % kWarpSize == 0) part[threadIdx.x / kWarpSize] = v;
  __syncthreads();
  T s = T(0);
#pragma unroll
  for (int w = 0; w < kWarps; ++w) s += part[w];
  return s;
}

template <typename T>
struct PrepArgs {
  const T* x;
  const T* z_real;
  const T* z_fake;  // null in score mode
  const T* t;
  int64_t batch, rows;  // rows = 3B (step) or B (score)
  int dx, n0;
  View<T> u0;
};

// u_0 rows: real (x, z_real), fake (x, z_fake), interpolated (x, t z_real + (1 - t) z_fake).
// Estimate (H200, B = 65536, N_0 = 26): 41 MB of HBM, 0.01-0.02 ms: HBM-bound.
template <typename T>
__global__ void __launch_bounds__(kThreads) critic_prep_kernel(const PrepArgs<T> a) {
  const int64_t total = a.rows * a.n0;
  const int dz = a.n0 - a.dx;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t m = e / a.n0;
    const int c = static_cast<int>(e % a.n0);
    const int kind = static_cast<int>(m / a.batch);
    const int64_t i = m % a.batch;
    T v;
    if (c < a.dx) {
      v = a.x[i * a.dx + c];
    } else {
      const T zr = a.z_real[i * dz + (c - a.dx)];
      if (kind == 0) {
        v = zr;
      } else {
        const T zf = a.z_fake[i * dz + (c - a.dx)];
        const T tt = a.t[i];
        v = kind == 1 ? zf : tt * zr + (T(1) - tt) * zf;
      }
    }
    *a.u0.at(m, c) = v;
  }
}

template <typename T>
struct PadJob {
  const T* src;  // (rows, cols) contiguous
  int64_t rows;
  int cols;
  View<T> dst;  // 16-byte aligned rows
};

template <typename T>
struct PadArgs {
  PadJob<T> jobs[kCriticMaxLayers];
};

// Weights with odd widths copied to rows cp.async can read; one job per blockIdx.y.
// Estimate: a few MB at most, launch-bound (a few us).
template <typename T>
__global__ void __launch_bounds__(kThreads) critic_pad_kernel(const __grid_constant__ PadArgs<T> a) {
  const PadJob<T>& job = a.jobs[blockIdx.y];
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; e < job.rows * job.cols;
       e += static_cast<int64_t>(gridDim.x) * kThreads)
    *job.dst.at(e / job.cols, e % job.cols) = job.src[e];
}

template <typename T>
struct HeadArgs {
  View<const T> u;  // u_{L-1}
  int64_t rows, batch;
  int k;
  const T* w;  // w_L (k)
  const T* b;  // b_L (1)
  T slope;
  bool step;  // row weights -1/B, 1/B, 1 by kind; score mode: 1/B
  T* f;       // (rows)
  View<T> d;  // D_{L-1}
};

// f = u . w_L + b_L and D_{L-1} = c s'(u) w_L; one warp per row.
// Estimate (H200, B = 65536, width 512): reads u, writes D: 0.8 GB of HBM, 0.17-0.23 ms: HBM-bound.
template <typename T>
__global__ void __launch_bounds__(kThreads) critic_head_kernel(const HeadArgs<T> a) {
  const int lane = threadIdx.x % kWarpSize;
  const T inv_b = T(1) / static_cast<T>(a.batch);
  for (int64_t m = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) / kWarpSize; m < a.rows;
       m += static_cast<int64_t>(gridDim.x) * kWarps) {
    const T* u = a.u.at(m, 0);
    T s = T(0);
    for (int c = lane; c < a.k; c += kWarpSize) s += u[c] * a.w[c];
    s = warp_sum(s);
    if (lane == 0) a.f[m] = s + a.b[0];
    const int kind = a.step ? static_cast<int>(m / a.batch) : 1;
    const T coef = kind == 0 ? -inv_b : (kind == 1 ? inv_b : T(1));
    T* d = a.d.at(m, 0);
    for (int c = lane; c < a.k; c += kWarpSize) d[c] = coef * (u[c] > T(0) ? T(1) : a.slope) * a.w[c];
  }
}

template <typename T>
struct NormArgs {
  T* g;  // g_0 of the interpolated rows, replaced by r_0
  int64_t ld, batch;
  int n0, lo;  // norm over columns [lo, n0): lo = dx for penalty_over="latent"
  T gp_weight;
  T* pen;  // (B): (|g| - 1)^2
};

// |g_0|, the penalty term and r_0 = 2 lambda (|g| - 1) g / (B |g|); one warp per row.
// Estimate (H200, B = 65536, N_0 = 26): 14 MB of HBM, under 0.01 ms: HBM- or launch-bound.
template <typename T>
__global__ void __launch_bounds__(kThreads) critic_norm_kernel(const NormArgs<T> a) {
  const int lane = threadIdx.x % kWarpSize;
  for (int64_t i = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) / kWarpSize; i < a.batch;
       i += static_cast<int64_t>(gridDim.x) * kWarps) {
    T* g = a.g + i * a.ld;
    T ss = T(0);
    for (int c = a.lo + lane; c < a.n0; c += kWarpSize) ss += g[c] * g[c];
    const T nrm = sqrt(warp_sum(ss));
    if (lane == 0) a.pen[i] = (nrm - T(1)) * (nrm - T(1));
    const T coef = nrm > T(0) ? T(2) * a.gp_weight * (nrm - T(1)) / (static_cast<T>(a.batch) * nrm) : T(0);
    for (int c = lane; c < a.n0; c += kWarpSize) g[c] = c < a.lo ? T(0) : coef * g[c];
  }
}

template <typename T>
struct ColSumJob {
  View<const T> src;
  int64_t rows;
  int cols;
  bool real_fake;  // rows [0, B) weighted -1/B and [B, 2B) +1/B (dw_L); otherwise weight 1
  T* partial;      // (splits, cols)
};

template <typename T>
struct ColSumArgs {
  ColSumJob<T> jobs[kCriticMaxLayers + 1];
  int64_t batch;
};

// partial[s, c] = weighted sum of column c over row chunk s of the job (rows split evenly over
// gridDim.y chunks); one thread per column, consecutive threads on consecutive columns.
// Estimate (H200, B = 65536, width 512): every D_l and u_{L-1}, r_{L-1} once: 0.94 GB of HBM,
// 0.2-0.27 ms, HBM-bound if the coalesced column walk keeps the memory busy.
template <typename T>
__global__ void __launch_bounds__(kThreads) critic_colsum_kernel(const __grid_constant__ ColSumArgs<T> a) {
  const ColSumJob<T>& job = a.jobs[blockIdx.z];
  const int c = blockIdx.x * kThreads + threadIdx.x;
  if (c >= job.cols) return;
  const int64_t chunk = (job.rows + gridDim.y - 1) / gridDim.y;
  const int64_t r0 = blockIdx.y * chunk;
  const int64_t r1 = job.rows < r0 + chunk ? job.rows : r0 + chunk;
  auto sum = [&](int64_t lo, int64_t hi) {
    T s = T(0);
    for (int64_t r = lo; r < hi; ++r) s += *job.src.at(r, c);
    return s;
  };
  T out;
  if (job.real_fake) {  // each kind's rows summed apart, then weighted
    const int64_t mid = a.batch < r0 ? r0 : (a.batch > r1 ? r1 : a.batch);
    out = (sum(mid, r1) - sum(r0, mid)) / static_cast<T>(a.batch);
  } else {
    out = sum(r0, r1);
  }
  job.partial[blockIdx.y * job.cols + c] = out;
}

template <typename T>
struct ReduceJob {
  const T* partial;  // (splits, n); splits = 0: the output is zero
  int64_t n;
  int splits;
  T* out;
};

template <typename T>
struct FinalizeArgs {
  ReduceJob<T> jobs[2 * kCriticMaxLayers];
  int count;
  const T* f;    // critic values (3B, or B in score mode)
  const T* pen;  // (B), null in score mode
  int64_t batch;
  T gp_weight;
  T* out3;   // loss, wasserstein, penalty
  T* score;  // score mode: mean f
};

// blockIdx.y < count: out = sum over splits of the partials, in split order.
// blockIdx.y == count, block 0: the scalars.
// Estimate: the partials (splits x the gradients: 3 MB for 26-512-512-1) once: launch-bound.
template <typename T>
__global__ void __launch_bounds__(kThreads) critic_finalize_kernel(const __grid_constant__ FinalizeArgs<T> a) {
  if (static_cast<int>(blockIdx.y) < a.count) {
    const ReduceJob<T>& job = a.jobs[blockIdx.y];
    for (int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; e < job.n;
         e += static_cast<int64_t>(gridDim.x) * kThreads) {
      T s = T(0);
      for (int k = 0; k < job.splits; ++k) s += job.partial[k * job.n + e];
      job.out[e] = s;
    }
    return;
  }
  if (blockIdx.x != 0) return;
  const int64_t B = a.batch;
  T sr = T(0), sf = T(0), sp = T(0);
  for (int64_t r = threadIdx.x; r < B; r += kThreads) {
    sr += a.f[r];
    if (a.pen != nullptr) {
      sf += a.f[B + r];
      sp += a.pen[r];
    }
  }
  sr = block_sum(sr);
  sf = block_sum(sf);
  sp = block_sum(sp);
  if (threadIdx.x == 0) {
    const T fr = sr / static_cast<T>(B), ff = sf / static_cast<T>(B), pen = sp / static_cast<T>(B);
    if (a.pen != nullptr) {
      a.out3[0] = ff - fr + a.gp_weight * pen;
      a.out3[1] = fr - ff;
      a.out3[2] = pen;
    } else {
      a.score[0] = fr;
    }
  }
}

unsigned row_blocks(int64_t rows_or_elems, int per_block) {
  const int64_t b = (rows_or_elems + per_block - 1) / per_block;
  return static_cast<unsigned>(b < 1 ? 1 : (b > (1 << 20) ? (1 << 20) : b));  // grid-stride loops cover the rest
}

// ------------------------------------------------------------------------------ host

template <typename T>
bool valid(const CriticGpParams<T>& p) {
  if (p.n_layers < 2 || p.n_layers > kCriticMaxLayers || p.batch <= 0) return false;
  if (p.dx < 0 || p.dx > p.widths[0] || p.widths[p.n_layers] != 1) return false;
  for (int l = 0; l < p.n_layers; ++l)
    if (p.widths[l] <= 0 || p.W[l] == nullptr || p.b[l] == nullptr) return false;
  // x may be null without a condition (dx = 0: stage 2's marginal critic), being never read then
  return p.scratch != nullptr && reinterpret_cast<uintptr_t>(p.scratch) % 16 == 0 &&
         (p.x != nullptr || p.dx == 0) && p.z_real != nullptr;
}

template <typename T>
MathMode main_mode(const CriticGpParams<T>& p) {
  if (std::is_same<T, double>::value) return MathMode::kSimt;
  switch (p.precision) {
    case CriticPrecision::kTf32: return MathMode::kTf32;
    case CriticPrecision::kTf32x3: return MathMode::kTf32x3;
    default: return MathMode::kSimt;
  }
}

// Where TF32 is not enough, 3xTF32: the forward, whose signs pick s'(a) for every later sweep
// (a pre-activation that TF32 flips changes its row's gradients by about 1/sqrt(width): about
// 2e-2 relative error against 5e-4 with this), and g_0 = D_1 W_1, whose norm enters the penalty
// as |g_0| - 1. The forward is 1 of the 10 hidden-width GEMMs of a 3-layer critic step and g_0
// has the input width, so this costs about a fifth more tensor-core work than TF32 throughout.
MathMode accurate_mode(MathMode mode) { return mode == MathMode::kTf32 ? MathMode::kTf32x3 : mode; }

#define LSDM_TRY(expr)                    \
  do {                                    \
    const cudaError_t err_ = (expr);      \
    if (err_ != cudaSuccess) return err_; \
  } while (0)

// The GEMM operand of W_{l+1} (l = 0..L-2): the weights themselves when their rows suit
// cp.async, otherwise their copy in the scratch (made by pad_weights).
template <typename T>
View<const T> weight_view(const CriticGpParams<T>& p, const CriticGpLayout& lay, int l) {
  if (rows_aligned(p.W[l], p.widths[l])) return make_view(p.W[l], p.widths[l]);
  return make_view<const T>(p.scratch + lay.wpad[l], lay.ld[l]);
}

template <typename T>
cudaError_t pad_weights(const CriticGpParams<T>& p, const CriticGpLayout& lay, cudaStream_t stream) {
  PadArgs<T> pa{};
  unsigned jobs = 0;
  int64_t most = 1;
  for (int l = 0; l + 1 < p.n_layers; ++l) {
    if (rows_aligned(p.W[l], p.widths[l])) continue;
    pa.jobs[jobs++] = {p.W[l], p.widths[l + 1], p.widths[l], make_view(p.scratch + lay.wpad[l], lay.ld[l])};
    most = static_cast<int64_t>(p.widths[l + 1]) * p.widths[l] > most ? static_cast<int64_t>(p.widths[l + 1]) * p.widths[l] : most;
  }
  if (jobs == 0) return cudaSuccess;
  LSDM_LAUNCH(critic_pad_kernel<T>, dim3(row_blocks(most, kThreads), jobs), kThreads, 0, stream, pa);
  return cudaGetLastError();
}

// The shared first half of both ops: u_0, the forward, the head (f, D_{L-1}) and the backward
// sweep down to D_1, over the stacked rows (3B for a step, B for the score).
template <typename T>
cudaError_t forward_and_backward(const CriticGpParams<T>& p, const CriticGpLayout& lay, bool step, MathMode mode,
                                 cudaStream_t stream) {
  const int L = p.n_layers;
  const int* N = p.widths;
  const int64_t B = p.batch, rows = step ? 3 * B : B;
  T* S = p.scratch;
  auto V = [&](int l) { return make_view(S + lay.v[l], lay.ld[l]); };
  auto D = [&](int l) { return make_view(S + lay.d[l], lay.ld[l]); };

  PrepArgs<T> prep{p.x, p.z_real, step ? p.z_fake : nullptr, p.t, B, rows, p.dx, N[0], V(0)};
  LSDM_LAUNCH(critic_prep_kernel<T>, row_blocks(rows * N[0], kThreads), kThreads, 0, stream, prep);
  LSDM_TRY(cudaGetLastError());
  LSDM_TRY(pad_weights(p, lay, stream));

  for (int l = 1; l < L; ++l) {  // U_l = s(U_{l-1} W_l^T + b_l)
    GemmProblem<T> g;
    g.a = make_view<const T>(S + lay.v[l - 1], lay.ld[l - 1]);
    g.b = weight_view(p, lay, l - 1);
    g.m = rows;
    g.n = N[l];
    g.k = N[l - 1];
    g.k_chunk = g.k;
    g.out = V(l);
    g.bias = p.b[l - 1];
    g.leaky = true;
    g.slope = p.slope;
    LSDM_TRY(launch_gemm(single(g), Operands::kForward, accurate_mode(mode), stream));
  }

  HeadArgs<T> head{make_view<const T>(S + lay.v[L - 1], lay.ld[L - 1]), rows, B, N[L - 1], p.W[L - 1], p.b[L - 1],
                   p.slope, step, S + lay.f, D(L - 1)};
  LSDM_LAUNCH(critic_head_kernel<T>, row_blocks(rows, kWarps), kThreads, 0, stream, head);
  LSDM_TRY(cudaGetLastError());

  for (int l = L - 1; l >= 2; --l) {  // D_{l-1} = s'(u_{l-1}) (D_l W_l)
    GemmProblem<T> g;
    g.a = make_view<const T>(S + lay.d[l], lay.ld[l]);
    g.b = weight_view(p, lay, l - 1);
    g.m = rows;
    g.n = N[l - 1];
    g.k = N[l];
    g.k_chunk = g.k;
    g.out = D(l - 1);
    g.gate = make_view<const T>(S + lay.v[l - 1], lay.ld[l - 1]);
    g.slope = p.slope;
    LSDM_TRY(launch_gemm(single(g), Operands::kBackward, mode, stream));
  }
  return cudaSuccess;
}

}  // namespace

template <typename T>
cudaError_t critic_gp_step(const CriticGpParams<T>& p, cudaStream_t stream) {
  if (!valid(p) || p.z_fake == nullptr || p.t == nullptr || p.out3 == nullptr) return cudaErrorInvalidValue;
  for (int l = 0; l < p.n_layers; ++l)
    if (p.grad_w[l] == nullptr || p.grad_b[l] == nullptr) return cudaErrorInvalidValue;
  const int L = p.n_layers;
  const int* N = p.widths;
  const int64_t B = p.batch;
  const CriticGpLayout lay = critic_gp_layout(N, L, p.batch, true);
  const MathMode mode = main_mode(p);
  T* S = p.scratch;
  auto rows_of = [&](int l, int64_t row0) { return S + lay.v[l] + row0 * lay.ld[l]; };  // V_l from row0

  LSDM_TRY(forward_and_backward(p, lay, true, mode, stream));

  {  // g_0 of the interpolated rows into V_0's r rows, then |g_0| and r_0 in place
    GemmProblem<T> g;
    g.a = make_view<const T>(S + lay.d[1] + 2 * B * lay.ld[1], lay.ld[1]);
    g.b = weight_view(p, lay, 0);
    g.m = B;
    g.n = N[0];
    g.k = N[1];
    g.k_chunk = g.k;
    g.out = make_view(rows_of(0, 3 * B), lay.ld[0]);
    LSDM_TRY(launch_gemm(single(g), Operands::kBackward, accurate_mode(mode), stream));
    NormArgs<T> na{rows_of(0, 3 * B), lay.ld[0], B, N[0], p.latent ? p.dx : 0, p.gp_weight, S + lay.p};
    LSDM_LAUNCH(critic_norm_kernel<T>, row_blocks(B, kWarps), kThreads, 0, stream, na);
    LSDM_TRY(cudaGetLastError());
  }

  for (int l = 1; l < L; ++l) {  // R_l = s'(u_l) (R_{l-1} W_l^T), interpolated rows
    GemmProblem<T> g;
    g.a = make_view<const T>(rows_of(l - 1, 3 * B), lay.ld[l - 1]);
    g.b = weight_view(p, lay, l - 1);
    g.m = B;
    g.n = N[l];
    g.k = N[l - 1];
    g.k_chunk = g.k;
    g.out = make_view(rows_of(l, 3 * B), lay.ld[l]);
    g.gate = make_view<const T>(rows_of(l, 2 * B), lay.ld[l]);
    g.slope = p.slope;
    LSDM_TRY(launch_gemm(single(g), Operands::kForward, mode, stream));
  }

  {  // dW_l = D_l^T V_{l-1}: real and fake rows against u, interpolated rows against r
    GemmBatch<T> wg;
    wg.splits = lay.w_splits;
    for (int l = 1; l < L; ++l) {
      const int64_t size = static_cast<int64_t>(N[l]) * N[l - 1];
      for (int part = 0; part < 2; ++part) {  // rows [0, 2B) with V rows [0, 2B); [2B, 3B) with [3B, 4B)
        GemmProblem<T>& g = wg.p[wg.count++];
        const int64_t rows = part == 0 ? 2 * B : B;
        g.a = make_view<const T>(S + lay.d[l] + (part == 0 ? 0 : 2 * B) * lay.ld[l], lay.ld[l]);
        g.b = make_view<const T>(rows_of(l - 1, part == 0 ? 0 : 3 * B), lay.ld[l - 1]);
        g.m = N[l];
        g.n = N[l - 1];
        g.k = rows;
        g.k_chunk = (rows + lay.w_splits - 1) / lay.w_splits;
        g.k_chunk = (g.k_chunk + 31) / 32 * 32;  // whole k tiles
        g.split_stride = size;
        g.out = make_view(S + lay.wpart[l] + part * lay.w_splits * size, N[l - 1]);
      }
    }
    LSDM_TRY(launch_gemm(wg, Operands::kWgrad, mode, stream));
  }

  {  // db_l (real and fake rows of D_l) and dw_L (real and fake rows of u_{L-1}, then r_{L-1})
    ColSumArgs<T> cs{};
    cs.batch = B;
    int jobs = 0, max_cols = N[L - 1];
    for (int l = 1; l < L; ++l) {
      cs.jobs[jobs++] = {make_view<const T>(S + lay.d[l], lay.ld[l]), 2 * B, N[l], false, S + lay.cpart[l]};
      max_cols = N[l] > max_cols ? N[l] : max_cols;
    }
    const View<const T> last = make_view<const T>(S + lay.v[L - 1], lay.ld[L - 1]);
    cs.jobs[jobs++] = {last, 2 * B, N[L - 1], true, S + lay.cpart[L]};
    cs.jobs[jobs++] = {make_view<const T>(rows_of(L - 1, 3 * B), lay.ld[L - 1]), B, N[L - 1], false,
                       S + lay.cpart[L] + static_cast<size_t>(lay.c_splits) * N[L - 1]};
    const dim3 grid(static_cast<unsigned>(cdiv(max_cols, kThreads)), static_cast<unsigned>(lay.c_splits),
                    static_cast<unsigned>(jobs));
    LSDM_LAUNCH(critic_colsum_kernel<T>, grid, kThreads, 0, stream, cs);
    LSDM_TRY(cudaGetLastError());
  }

  {  // the chunk sums in order, and the scalars
    FinalizeArgs<T> fa{};
    int64_t max_n = 1;
    auto job = [&](const T* part, int64_t n, int splits, T* out) {
      fa.jobs[fa.count++] = {part, n, splits, out};
      max_n = n > max_n ? n : max_n;
    };
    for (int l = 1; l < L; ++l) {
      job(S + lay.wpart[l], static_cast<int64_t>(N[l]) * N[l - 1], 2 * lay.w_splits, p.grad_w[l - 1]);
      job(S + lay.cpart[l], N[l], lay.c_splits, p.grad_b[l - 1]);
    }
    job(S + lay.cpart[L], N[L - 1], 2 * lay.c_splits, p.grad_w[L - 1]);
    job(nullptr, 1, 0, p.grad_b[L - 1]);  // db_L = 0
    fa.f = S + lay.f;
    fa.pen = S + lay.p;
    fa.batch = B;
    fa.gp_weight = p.gp_weight;
    fa.out3 = p.out3;
    const unsigned blocks = row_blocks(max_n, kThreads);
    const dim3 grid(blocks > 1024 ? 1024 : blocks, static_cast<unsigned>(fa.count + 1));
    LSDM_LAUNCH(critic_finalize_kernel<T>, grid, kThreads, 0, stream, fa);
    LSDM_TRY(cudaGetLastError());
  }
  return cudaSuccess;
}

template <typename T>
cudaError_t critic_score_grad(const CriticGpParams<T>& p, cudaStream_t stream) {
  if (!valid(p) || p.dz == nullptr || p.score == nullptr) return cudaErrorInvalidValue;
  const int* N = p.widths;
  const CriticGpLayout lay = critic_gp_layout(N, p.n_layers, p.batch, false);
  const MathMode mode = main_mode(p);
  LSDM_TRY(forward_and_backward(p, lay, false, mode, stream));
  {  // dz = (D_1 W_1)[:, dx:], straight into dz
    GemmProblem<T> g;
    g.a = make_view<const T>(p.scratch + lay.d[1], lay.ld[1]);
    g.b = weight_view(p, lay, 0);
    g.m = p.batch;
    g.n = N[0];
    g.k = N[1];
    g.k_chunk = g.k;
    g.out = make_view(p.dz, N[0] - p.dx);
    g.col0 = p.dx;
    LSDM_TRY(launch_gemm(single(g), Operands::kBackward, accurate_mode(mode), stream));
  }
  FinalizeArgs<T> fa{};
  fa.f = p.scratch + lay.f;
  fa.batch = p.batch;
  fa.score = p.score;
  LSDM_LAUNCH(critic_finalize_kernel<T>, dim3(1, 1), kThreads, 0, stream, fa);
  return cudaGetLastError();
}

template cudaError_t critic_gp_step<float>(const CriticGpParams<float>&, cudaStream_t);
template cudaError_t critic_gp_step<double>(const CriticGpParams<double>&, cudaStream_t);
template cudaError_t critic_score_grad<float>(const CriticGpParams<float>&, cudaStream_t);
template cudaError_t critic_score_grad<double>(const CriticGpParams<double>&, cudaStream_t);

}  // namespace cuda
}  // namespace lsdm
