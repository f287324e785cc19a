// Building blocks shared by the critic GEMMs (critic_gp.cu) and the fused MLP (mlp_fused.cu):
// cp.async global -> shared copies with zero fill, and a warp tile of FM x FN 16x16 output
// sub-tiles computed on the tensor cores (nvcuda::wmma: TF32 m16n16k8, 3xTF32, bf16/fp16
// m16n16k16, all with float accumulators) or with plain FMAs (float32 "ieee" and float64).
//
// Every mode shares one contract, so that a kernel is written once for all of them:
//   - operands sit in shared memory; A is M x K, B is K x N, each row- or column-major
//     (template flags), with 16x16 sub-tile origins 32-byte aligned and leading dimensions a
//     multiple of 16 bytes (what wmma::load_matrix_sync requires);
//   - step() consumes kStep columns of A / rows of B;
//   - stage(i, j, patch, ld) writes sub-tile (i, j) row-major into a per-warp patch, from
//     which the kernel's epilogue reads; the owner of an element inside the patch is not
//     specified, so a __syncwarp() must separate stage() from reading the patch.
//
// LSDM_HOST_EMULATION builds these for the CPU test harness (tests/cuda_emu): cp.async becomes
// a plain copy and wmma comes from the harness's own mma.h.
#pragma once
#include <atomic>
#include <cstdint>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

// Dynamic shared memory, declared through a macro so that the host harness can supply it.
#ifndef LSDM_DYNAMIC_SMEM
#define LSDM_DYNAMIC_SMEM(name) extern __shared__ __align__(128) unsigned char name[]
#endif
// Kernel launches, likewise (the harness runs each block's threads as fibers on a CPU).
#ifndef LSDM_LAUNCH
#define LSDM_LAUNCH(kernel, grid, block, smem, stream, ...) kernel<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__)
#endif

namespace lsdm {
namespace cuda {

enum class MathMode : int {
  kSimt = 0,    // FMA units, the operand type itself (float32 "ieee", float64)
  kTf32 = 1,    // float32 operands rounded to TF32 (10-bit mantissa), float accumulation
  kTf32x3 = 2,  // float32 split into big + small TF32 parts, three MMAs: about float32 accuracy
  kHalf = 3,    // bf16 / fp16 operands, float accumulation
};

constexpr int kWarpSize = 32;

__host__ __device__ constexpr int round_up(int x, int m) { return (x + m - 1) / m * m; }
__host__ __device__ constexpr int cdiv(int x, int m) { return (x + m - 1) / m; }

// Opts `Kernel` into the device's largest dynamic shared memory, once per device: later calls
// only read a flag, so a launch inside a CUDA-graph capture (after a warm-up call, as torch asks)
// makes no attribute calls. The launch's own byte count then selects the occupancy.
template <auto Kernel>
cudaError_t allow_max_dynamic_smem() {
  static std::atomic<uint64_t> done{0};  // bit d: device d (devices >= 64 are set on every call)
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  const uint64_t bit = dev < 64 ? uint64_t{1} << dev : 0;
  if (bit != 0 && (done.load(std::memory_order_acquire) & bit)) return cudaSuccess;
  int max_smem = 0;
  err = cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  if (err == cudaSuccess) err = cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, max_smem);
  if (err == cudaSuccess) done.fetch_or(bit, std::memory_order_release);
  return err;
}

// ------------------------------------------------------------------------------ cp.async

// Copies kBytes from global to shared memory, of which only the first src_bytes are read and
// the rest zero-filled (src_bytes = 0: zeros; gmem must still be a valid address).
template <int kBytes>
__device__ __forceinline__ void cp_async(void* smem, const void* gmem, int src_bytes) {
  static_assert(kBytes == 4 || kBytes == 8 || kBytes == 16, "cp.async copies 4, 8 or 16 bytes");
#ifdef LSDM_HOST_EMULATION
  lsdm_emu_cp_async(smem, gmem, kBytes, src_bytes);
#else
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  if constexpr (kBytes == 16) {  // .cg: bypass L1, operands are streamed once per tile
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes) : "memory");
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(s), "l"(gmem), "n"(kBytes), "r"(src_bytes)
                 : "memory");
  }
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#ifndef LSDM_HOST_EMULATION
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Waits until at most kPending committed groups are still in flight.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
#ifndef LSDM_HOST_EMULATION
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
#endif
}

// ------------------------------------------------------------------------------ warp tiles

template <MathMode M, typename T>
struct MathTraits {
  using Acc = float;
  static constexpr int kStep = 8;
};
template <>
struct MathTraits<MathMode::kSimt, double> {
  using Acc = double;
  static constexpr int kStep = 8;
};
template <typename T>
struct MathTraits<MathMode::kHalf, T> {
  using Acc = float;
  static constexpr int kStep = 16;
};

// FM x FN sub-tiles of 16x16 on the tensor cores. A(m, k) = A_ROW ? a[m*lda + k] : a[k*lda + m];
// B(k, n) = B_ROW ? b[k*ldb + n] : b[n*ldb + k]; pointers at the warp's (m, k) / (k, n) origin.
template <MathMode M, typename T, int FM, int FN, bool A_ROW, bool B_ROW>
struct WmmaTile {
  static_assert(M != MathMode::kSimt, "WmmaTile is the tensor-core tile");
  static_assert(M == MathMode::kHalf ? !std::is_same<T, float>::value : std::is_same<T, float>::value,
                "TF32 modes take float operands, kHalf takes bf16 / fp16");
  static constexpr int kStep = MathTraits<M, T>::kStep;
  using Elem = typename std::conditional<M == MathMode::kHalf, T, nvcuda::wmma::precision::tf32>::type;
  using ALayout = typename std::conditional<A_ROW, nvcuda::wmma::row_major, nvcuda::wmma::col_major>::type;
  using BLayout = typename std::conditional<B_ROW, nvcuda::wmma::row_major, nvcuda::wmma::col_major>::type;
  using FragA = nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, kStep, Elem, ALayout>;
  using FragB = nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, kStep, Elem, BLayout>;
  using FragC = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, kStep, float>;

  FragC acc[FM][FN];

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int i = 0; i < FM; ++i)
#pragma unroll
      for (int j = 0; j < FN; ++j) nvcuda::wmma::fill_fragment(acc[i][j], 0.0f);
  }

  template <typename Frag>
  __device__ __forceinline__ static void to_tf32(Frag& f) {
#pragma unroll
    for (int t = 0; t < f.num_elements; ++t) f.x[t] = nvcuda::wmma::__float_to_tf32(f.x[t]);
  }

  // big = tf32(v), small = tf32(v - big): v = big + small to about 2^-22 relative.
  template <typename Frag>
  __device__ __forceinline__ static void split_tf32(Frag& big, Frag& small) {
#pragma unroll
    for (int t = 0; t < big.num_elements; ++t) {
      const float v = big.x[t];
      big.x[t] = nvcuda::wmma::__float_to_tf32(v);
      small.x[t] = nvcuda::wmma::__float_to_tf32(v - big.x[t]);
    }
  }

  __device__ __forceinline__ void step(const T* a, int lda, const T* b, int ldb) {
    // B fragments are loaded once per step and reused for every row of sub-tiles; A one at a
    // time, which keeps the live fragments (and registers) to FN B's plus one A.
    FragB fb[FN];
    FragB fb_small[M == MathMode::kTf32x3 ? FN : 1];
#pragma unroll
    for (int j = 0; j < FN; ++j) {
      nvcuda::wmma::load_matrix_sync(fb[j], b + (B_ROW ? 16 * j : 16 * j * ldb), ldb);
      if constexpr (M == MathMode::kTf32) to_tf32(fb[j]);
      if constexpr (M == MathMode::kTf32x3) split_tf32(fb[j], fb_small[j]);
    }
#pragma unroll
    for (int i = 0; i < FM; ++i) {
      FragA fa;
      nvcuda::wmma::load_matrix_sync(fa, a + (A_ROW ? 16 * i * lda : 16 * i), lda);
      if constexpr (M == MathMode::kTf32x3) {
        FragA fa_small;
        split_tf32(fa, fa_small);
#pragma unroll
        for (int j = 0; j < FN; ++j) {  // small products first: they are the ones rounding hurts
          nvcuda::wmma::mma_sync(acc[i][j], fa_small, fb[j], acc[i][j]);
          nvcuda::wmma::mma_sync(acc[i][j], fa, fb_small[j], acc[i][j]);
          nvcuda::wmma::mma_sync(acc[i][j], fa, fb[j], acc[i][j]);
        }
      } else {
        if constexpr (M == MathMode::kTf32) to_tf32(fa);
#pragma unroll
        for (int j = 0; j < FN; ++j) nvcuda::wmma::mma_sync(acc[i][j], fa, fb[j], acc[i][j]);
      }
    }
  }

  __device__ __forceinline__ void stage(int i, int j, float* patch, int ldp) const {
    nvcuda::wmma::store_matrix_sync(patch, acc[i][j], ldp, nvcuda::wmma::mem_row_major);
  }
};

// The same contract on the FMA units: lane l owns row l/2 and 8 consecutive columns
// 8*(l%2) .. 8*(l%2)+7 of every sub-tile; accumulation in T (float32 or float64).
template <typename T, int FM, int FN, bool A_ROW, bool B_ROW>
struct SimtTile {
  static constexpr int kStep = 8;
  T acc[FM][FN][8];

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int i = 0; i < FM; ++i)
#pragma unroll
      for (int j = 0; j < FN; ++j)
#pragma unroll
        for (int c = 0; c < 8; ++c) acc[i][j][c] = T(0);
  }

  __device__ __forceinline__ void step(const T* a, int lda, const T* b, int ldb) {
    const int lane = threadIdx.x % kWarpSize;
    const int r = lane >> 1, c0 = (lane & 1) * 8;
#pragma unroll
    for (int kk = 0; kk < kStep; ++kk) {
      T bv[FN][8];
#pragma unroll
      for (int j = 0; j < FN; ++j)
#pragma unroll
        for (int c = 0; c < 8; ++c) {
          const int n = 16 * j + c0 + c;
          bv[j][c] = B_ROW ? b[kk * ldb + n] : b[n * ldb + kk];
        }
#pragma unroll
      for (int i = 0; i < FM; ++i) {
        const int m = 16 * i + r;
        const T av = A_ROW ? a[m * lda + kk] : a[kk * lda + m];
#pragma unroll
        for (int j = 0; j < FN; ++j)
#pragma unroll
          for (int c = 0; c < 8; ++c) acc[i][j][c] = fma(av, bv[j][c], acc[i][j][c]);
      }
    }
  }

  __device__ __forceinline__ void stage(int i, int j, T* patch, int ldp) const {
    const int lane = threadIdx.x % kWarpSize;
    const int r = lane >> 1, c0 = (lane & 1) * 8;
#pragma unroll
    for (int c = 0; c < 8; ++c) patch[r * ldp + c0 + c] = acc[i][j][c];
  }
};

template <MathMode M, typename T, int FM, int FN, bool A_ROW, bool B_ROW>
using WarpTile = typename std::conditional<M == MathMode::kSimt, SimtTile<T, FM, FN, A_ROW, B_ROW>,
                                           WmmaTile<M, T, FM, FN, A_ROW, B_ROW>>::type;

// Row stride (elements) of a 16x16 epilogue patch: 16 plus a 16-byte skew against bank conflicts.
template <typename Acc>
__host__ __device__ constexpr int patch_ld() {
  return 16 + 16 / static_cast<int>(sizeof(Acc));
}

}  // namespace cuda
}  // namespace lsdm
