// Host emulation of the CUDA subset that kernels/*.cu use, so that the kernels themselves
// (unchanged source) can be compiled with g++ and checked for numerics on a machine without a
// GPU. Each thread block runs its threads as cooperative fibers (ucontext) on one OS thread:
// __syncthreads / __syncwarp / shuffles are barriers between fibers, shared memory is plain
// host memory (dynamic shared memory is poisoned with NaN bytes before every block), and
// cp.async is a synchronous copy. Fibers run in thread order, or reversed (set_order), so
// that a missing barrier shows up as a read of unwritten data in one order or the other.
//
// What this cannot check: timing, the hardware's fragment layouts (wmma hides them; the
// emulated fragments hold whole tiles), memory-model subtleties beyond barriers.
#pragma once
#include <math.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>

#define LSDM_HOST_EMULATION 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __align__(n) alignas(n)
#define __grid_constant__
#define __shared__ static

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
extern uint3 threadIdx, blockIdx;
extern dim3 blockDim, gridDim;

enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchOutOfResources = 701,
};
typedef struct CUstream_st* cudaStream_t;
enum cudaFuncAttribute : int { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaDeviceAttr : int { cudaDevAttrMultiProcessorCount = 16, cudaDevAttrMaxSharedMemoryPerBlockOptin = 97 };

namespace lsdm_emu {
void launch(const void* kernel, dim3 grid, dim3 block, size_t smem, const std::function<void()>& body);
unsigned char* dynamic_smem();
void sync_block();
void sync_warp();
void exchange(const void* in, void* out, size_t bytes, int src_lane);  // warp-collective
void all_gather(const void* in, void* out, size_t bytes);  // warp-collective: out[lane] = lane's in
void set_error(cudaError_t e);
cudaError_t take_error();
void set_func_smem(const void* kernel, int bytes);
void set_order(int reverse);
}  // namespace lsdm_emu

#define LSDM_DYNAMIC_SMEM(name) unsigned char* name = ::lsdm_emu::dynamic_smem()
#define LSDM_LAUNCH(kernel, grid, block, smem, stream, ...) \
  ::lsdm_emu::launch(reinterpret_cast<const void*>(kernel), dim3(grid), dim3(block), (smem), [&]() { kernel(__VA_ARGS__); })

inline cudaError_t cudaGetLastError() { return lsdm_emu::take_error(); }
inline const char* cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : "emulated CUDA error"; }
template <typename F>
inline cudaError_t cudaFuncSetAttribute(F* kernel, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  if (value > 232448) return cudaErrorInvalidValue;  // sm_90: 227 KB per block
  lsdm_emu::set_func_smem(reinterpret_cast<const void*>(kernel), value);
  return cudaSuccess;
}
inline cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr attr, int) {
  *v = attr == cudaDevAttrMultiProcessorCount ? 132 : 232448;  // an H100 SXM
  return cudaSuccess;
}

inline void __syncthreads() { lsdm_emu::sync_block(); }
inline void __syncwarp(unsigned = 0xffffffffu) { lsdm_emu::sync_warp(); }
template <typename T>
inline T __shfl_xor_sync(unsigned, T v, int lane_mask, int = 32) {
  T out;
  lsdm_emu::exchange(&v, &out, sizeof(T), static_cast<int>(threadIdx.x % 32) ^ lane_mask);
  return out;
}
template <typename T>
inline T __shfl_sync(unsigned, T v, int src_lane, int = 32) {
  T out;
  lsdm_emu::exchange(&v, &out, sizeof(T), src_lane);
  return out;
}
template <typename T>
inline T __ldg(const T* p) {
  return *p;
}
inline unsigned __umulhi(unsigned a, unsigned b) {
  return static_cast<unsigned>((static_cast<uint64_t>(a) * b) >> 32);
}
using std::fma;
using std::max;
using std::min;
using std::sqrt;

// cp.async: the copy happens at once; checks the alignment the hardware requires.
void lsdm_emu_cp_async(void* smem, const void* gmem, int bytes, int src_bytes);

// Warp-collective ldmatrix.sync.aligned.m8n8.x4.shared.b16 and
// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32, from the PTX ISA's
// operand ownership (every lane must call them, as on the hardware).
void lsdm_emu_ldmatrix_x4(uint32_t (&r)[4], const void* row);
void lsdm_emu_mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, bool bf16);

// CUDA's cospi (glibc has none before 2.41): cos(pi x), accurate to a few ulps like the device's.
inline double cospi(double x) { return std::cos(3.141592653589793 * x); }
// sqrt rounded to nearest: what IEEE sqrtf is on the host.
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
