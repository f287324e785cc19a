// Building blocks shared by the critic GEMMs (critic_gp.cu) and the fused MLP (mlp_fused.cu):
// cp.async global -> shared copies with zero fill, and a warp tile of FM x FN 16x16 output
// sub-tiles computed on the tensor cores (nvcuda::wmma TF32 m16n16k8 and 3xTF32; mma.sync
// m16n8k16 with ldmatrix for bf16/fp16; float accumulators) or with plain FMAs (float32
// "ieee" and float64).
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
// a plain copy, wmma comes from the harness's own mma.h, and ldmatrix / mma.sync are warp-
// collective emulations of the PTX semantics quoted at MmaTile.
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
  static_assert(M == MathMode::kTf32 || M == MathMode::kTf32x3, "WmmaTile is the TF32 tensor-core tile");
  static_assert(std::is_same<T, float>::value, "TF32 modes take float operands");
  static constexpr int kStep = MathTraits<M, T>::kStep;
  using Elem = nvcuda::wmma::precision::tf32;
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

// bf16 / fp16 on mma.sync.m16n8k16 with ldmatrix.x4 fragment loads (wmma's bf16 loads compile
// to generic 32-bit loads with per-lane address arithmetic at every k step; ldmatrix takes one
// instruction per 16x16 operand tile from a shared address). Operand ownership, lane l, g = l/4,
// t = l%4 (PTX ISA, "Matrix fragments for mma.m16n8k16"): A register r holds row g + 8 (r % 2),
// k pair t + 4 (r / 2); B register r holds column g, k pair t + 4 r; D register r is row
// g + 8 (r / 2), column 2 t + r % 2. ldmatrix.x4: lane 8 j + i gives the address of row i of
// 8x8 matrix j and receives, for every j, the k pair (l % 4) of row (l / 4). Only A row-major
// ([m][k]) with B column-major ([n][k]), as the fused MLP stores them.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
#ifdef LSDM_HOST_EMULATION
  lsdm_emu_ldmatrix_x4(r, row);
#else
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
#endif
}

template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  static_assert(std::is_same<T, __nv_bfloat16>::value || std::is_same<T, __half>::value, "bf16 or fp16");
#ifdef LSDM_HOST_EMULATION
  lsdm_emu_mma_16816(d, a, b0, b1, std::is_same<T, __nv_bfloat16>::value);
#else
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
#endif
}

template <typename T, int FM, int FN, bool A_ROW, bool B_ROW>
struct MmaTile {
  static_assert(A_ROW && !B_ROW, "MmaTile takes A row-major and B column-major");
  static constexpr int kStep = 16;
  float acc[FM][2 * FN][4];  // sub-tile (i, j) is the n8 tiles 2j and 2j + 1

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int i = 0; i < FM; ++i)
#pragma unroll
      for (int j = 0; j < 2 * FN; ++j)
#pragma unroll
        for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;
  }

  __device__ __forceinline__ void step(const T* a, int lda, const T* b, int ldb) {
    const int lane = threadIdx.x % kWarpSize;
    // A: matrices (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15)
    const T* a_row = a + (lane & 15) * lda + (lane >> 4) * 8;
    // B: matrices (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15)
    const T* b_row = b + ((lane >> 4) * 8 + (lane & 7)) * ldb + ((lane >> 3) & 1) * 8;
    uint32_t fb[FN][4];
#pragma unroll
    for (int j = 0; j < FN; ++j) ldmatrix_x4(fb[j], b_row + 16 * j * ldb);
#pragma unroll
    for (int i = 0; i < FM; ++i) {
      uint32_t fa[4];
      ldmatrix_x4(fa, a_row + 16 * i * lda);
#pragma unroll
      for (int j = 0; j < FN; ++j) {
        mma_16816<T>(acc[i][2 * j], fa, fb[j][0], fb[j][1]);
        mma_16816<T>(acc[i][2 * j + 1], fa, fb[j][2], fb[j][3]);
      }
    }
  }

  __device__ __forceinline__ void stage(int i, int j, float* patch, int ldp) const {
    const int lane = threadIdx.x % kWarpSize;
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int r = 0; r < 4; ++r) patch[(g + 8 * (r >> 1)) * ldp + 8 * h + 2 * t + (r & 1)] = acc[i][2 * j + h][r];
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
using WarpTile = typename std::conditional<
    M == MathMode::kSimt, SimtTile<T, FM, FN, A_ROW, B_ROW>,
    typename std::conditional<M == MathMode::kHalf, MmaTile<T, FM, FN, A_ROW, B_ROW>,
                              WmmaTile<M, T, FM, FN, A_ROW, B_ROW>>::type>::type;

// Row stride (elements) of a 16x16 epilogue patch: 16 plus a 16-byte skew against bank conflicts.
template <typename Acc>
__host__ __device__ constexpr int patch_ld() {
  return 16 + 16 / static_cast<int>(sizeof(Acc));
}

}  // namespace cuda
}  // namespace lsdm
