// Fused WGAN-GP critic step: see critic_gp.cuh for the maths and the scratch layout.
#include "critic_gp.cuh"

#include <cuda_runtime.h>

// Every launch goes through this macro so that a host-side emulation harness can run the same
// kernel code on a CPU (one std::thread per CUDA thread); nvcc builds use the usual syntax.
#ifndef LSDM_LAUNCH
#define LSDM_LAUNCH(kernel, grid, block, stream, ...) kernel<<<(grid), (block), 0, (stream)>>>(__VA_ARGS__)
#endif

namespace lsdm {
namespace cuda {
namespace {

constexpr int kThreads = 256;

template <typename T>
__device__ __forceinline__ T dact(T a, T slope) {  // s'(a) of LeakyReLU, as torch: a > 0 ? 1 : slope
  return a > T(0) ? T(1) : slope;
}

// Sum of v over the block; every thread of the block must call it; all get the result.
template <typename T>
__device__ T block_sum(T v, T* sh) {
  __syncthreads();  // sh may still be read by a previous call
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
    __syncthreads();
  }
  return sh[0];
}

// One block per (sample i = blockIdx.x, kind k = blockIdx.y). kind 0 real, 1 fake, 2 interpolated;
// score mode: one kind (the given z), c = 1/B, writes dz instead of the penalty terms.
template <typename T>
__global__ void __launch_bounds__(kThreads) critic_rows_kernel(CriticGpParams<T> p, CriticGpLayout lay, bool score) {
  __shared__ T sh[kThreads];
  const int L = p.n_layers;
  const long long B = p.batch;
  const long long i = blockIdx.x;
  const int kind = blockIdx.y;
  const long long g = kind * B + i;  // stacked row
  const int* N = p.widths;
  const int dx = p.dx;
  const int dzw = N[0] - dx;
  T* S = p.scratch;
  const T slope = p.slope;

  // input u_0
  {
    T* u0 = S + lay.act[0] + g * N[0];
    const T tt = (!score && kind == 2) ? p.t[i] : T(0);
    for (int c = threadIdx.x; c < N[0]; c += blockDim.x) {
      T v;
      if (c < dx) {
        v = p.x[i * dx + c];
      } else {
        const T zr = p.z_real[i * dzw + (c - dx)];
        if (score || kind == 0) {
          v = zr;
        } else {
          const T zf = p.z_fake[i * dzw + (c - dx)];
          v = kind == 1 ? zf : tt * zr + (T(1) - tt) * zf;
        }
      }
      u0[c] = v;
    }
  }
  __syncthreads();

  // forward, hidden layers: u_l = s(W_l u_{l-1} + b_l)
  for (int l = 1; l < L; ++l) {
    const int K = N[l - 1], Nl = N[l];
    const T* W = p.W[l - 1];
    const T* uin = S + lay.act[l - 1] + g * K;
    T* uout = S + lay.act[l] + g * Nl;
    for (int j = threadIdx.x; j < Nl; j += blockDim.x) {
      T a = p.b[l - 1][j];
      const T* w = W + static_cast<long long>(j) * K;
      for (int k = 0; k < K; ++k) a += w[k] * uin[k];
      uout[j] = a > T(0) ? a : a * slope;
    }
    __syncthreads();
  }

  // output layer
  const int KL = N[L - 1];
  const T* wL = p.W[L - 1];
  const T* uL = S + lay.act[L - 1] + g * KL;
  {
    T part = T(0);
    for (int k = threadIdx.x; k < KL; k += blockDim.x) part += wL[k] * uL[k];
    const T f = block_sum(part, sh) + p.b[L - 1][0];
    if (threadIdx.x == 0) S[lay.f + g] = f;
  }

  // backward sweep: D_l = c * delta_l
  const T invB = T(1) / static_cast<T>(B);
  const T c = score ? invB : (kind == 0 ? -invB : (kind == 1 ? invB : T(1)));
  if (threadIdx.x == 0) S[lay.d[L - 1] + g] = c;  // D_L (width 1)
  {
    T* D = S + lay.d[L - 2] + g * KL;  // D_{L-1}
    for (int j = threadIdx.x; j < KL; j += blockDim.x) D[j] = c * dact(uL[j], slope) * wL[j];
  }
  __syncthreads();
  for (int l = L - 1; l >= 2; --l) {  // D_{l-1} = s'(a_{l-1}) * (W_l^T D_l)
    const int Nl = N[l], Nm = N[l - 1];
    const T* W = p.W[l - 1];  // (Nl, Nm)
    const T* Din = S + lay.d[l - 1] + g * Nl;
    T* Dout = S + lay.d[l - 2] + g * Nm;
    const T* u = S + lay.act[l - 1] + g * Nm;
    for (int j = threadIdx.x; j < Nm; j += blockDim.x) {
      T a = T(0);
      for (int o = 0; o < Nl; ++o) a += W[static_cast<long long>(o) * Nm + j] * Din[o];
      Dout[j] = dact(u[j], slope) * a;
    }
    __syncthreads();
  }

  // g_0 = W_1^T D_1
  const int N1 = N[1];
  const T* W1 = p.W[0];
  const T* D1 = S + lay.d[0] + g * N1;
  if (score) {
    for (int j = dx + threadIdx.x; j < N[0]; j += blockDim.x) {
      T a = T(0);
      for (int o = 0; o < N1; ++o) a += W1[static_cast<long long>(o) * N[0] + j] * D1[o];
      p.dz[i * dzw + (j - dx)] = a;
    }
    return;
  }
  if (kind != 2) return;  // uniform per block

  T* R0 = S + lay.r[0] + i * N[0];
  T part = T(0);
  for (int j = threadIdx.x; j < N[0]; j += blockDim.x) {
    T a = T(0);
    if (!(p.latent && j < dx)) {
      for (int o = 0; o < N1; ++o) a += W1[static_cast<long long>(o) * N[0] + j] * D1[o];
    }
    R0[j] = a;
    part += a * a;
  }
  const T nrm = sqrt(block_sum(part, sh));
  if (threadIdx.x == 0) S[lay.p + i] = (nrm - T(1)) * (nrm - T(1));
  const T coef = nrm > T(0) ? T(2) * p.gp_weight * (nrm - T(1)) * invB / nrm : T(0);
  for (int j = threadIdx.x; j < N[0]; j += blockDim.x) R0[j] *= coef;  // same thread wrote R0[j]
  __syncthreads();
  // r sweep: r_l = s'(a_l) * (W_l r_{l-1})
  for (int l = 1; l < L; ++l) {
    const int K = N[l - 1], Nl = N[l];
    const T* W = p.W[l - 1];
    const T* rin = S + lay.r[l - 1] + i * K;
    T* rout = S + lay.r[l] + i * Nl;
    const T* u = S + lay.act[l] + g * Nl;
    for (int j = threadIdx.x; j < Nl; j += blockDim.x) {
      T a = T(0);
      const T* w = W + static_cast<long long>(j) * K;
      for (int k = 0; k < K; ++k) a += w[k] * rin[k];
      rout[j] = dact(u[j], slope) * a;
    }
    __syncthreads();
  }
}

// Thread per element of [dW_l | db_l] (N_l x (N_{l-1} + 1)), all layers; sums over the 3B rows.
// The last block (blockIdx.x == gridDim.x - 1) reduces loss / wasserstein / penalty.
template <typename T>
__global__ void __launch_bounds__(kThreads) critic_wgrad_kernel(CriticGpParams<T> p, CriticGpLayout lay,
                                                                 long long n_elems) {
  __shared__ T sh[kThreads];
  const long long B = p.batch;
  const T* S = p.scratch;
  if (blockIdx.x == gridDim.x - 1) {
    T sr = T(0), sf = T(0), sp = T(0);
    for (long long r = threadIdx.x; r < B; r += blockDim.x) {
      sr += S[lay.f + r];
      sf += S[lay.f + B + r];
      sp += S[lay.p + r];
    }
    sr = block_sum(sr, sh);
    sf = block_sum(sf, sh);
    sp = block_sum(sp, sh);
    if (threadIdx.x == 0) {
      const T fr = sr / static_cast<T>(B), ff = sf / static_cast<T>(B), pen = sp / static_cast<T>(B);
      p.out3[0] = ff - fr + p.gp_weight * pen;
      p.out3[1] = fr - ff;
      p.out3[2] = pen;
    }
    return;
  }
  const long long e0 = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  const long long stride = static_cast<long long>(gridDim.x - 1) * blockDim.x;
  const int L = p.n_layers;
  const long long M = 3 * B;
  for (long long e = e0; e < n_elems; e += stride) {
    long long rem = e;
    int l = 1;
    for (; l <= L; ++l) {
      const long long sz = static_cast<long long>(p.widths[l]) * (p.widths[l - 1] + 1);
      if (rem < sz) break;
      rem -= sz;
    }
    const int K = p.widths[l - 1], O = p.widths[l];
    const int o = static_cast<int>(rem / (K + 1));
    const int k = static_cast<int>(rem % (K + 1));
    const T* D = S + lay.d[l - 1];
    const T* A = S + lay.act[l - 1];
    const T* R = S + lay.r[l - 1];
    T acc = T(0);
    if (k < K) {
      for (long long r = 0; r < 2 * B; ++r) acc += D[r * O + o] * A[r * K + k];
      for (long long r = 2 * B; r < M; ++r) acc += D[r * O + o] * R[(r - 2 * B) * K + k];
      p.grad_w[l - 1][static_cast<long long>(o) * K + k] = acc;
    } else {  // bias column: real and fake rows only; db_L = 0 exactly
      if (l < L) {
        for (long long r = 0; r < 2 * B; ++r) acc += D[r * O + o];
      }
      p.grad_b[l - 1][o] = acc;
    }
  }
}

template <typename T>
__global__ void critic_score_mean_kernel(const T* f, int batch, T* out) {
  __shared__ T sh[kThreads];
  T s = T(0);
  for (int r = threadIdx.x; r < batch; r += blockDim.x) s += f[r];
  s = block_sum(s, sh);
  if (threadIdx.x == 0) out[0] = s / static_cast<T>(batch);
}

template <typename T>
bool valid(const CriticGpParams<T>& p) {
  if (p.n_layers < 2 || p.n_layers > kCriticMaxLayers || p.batch <= 0) return false;
  if (p.dx < 0 || p.dx > p.widths[0] || p.widths[p.n_layers] != 1) return false;
  for (int l = 0; l < p.n_layers; ++l)
    if (p.widths[l] <= 0 || p.W[l] == nullptr || p.b[l] == nullptr) return false;
  return p.scratch != nullptr && p.x != nullptr && p.z_real != nullptr;
}

}  // namespace

template <typename T>
cudaError_t critic_gp_step(const CriticGpParams<T>& p, cudaStream_t stream) {
  if (!valid(p) || p.z_fake == nullptr || p.t == nullptr || p.out3 == nullptr) return cudaErrorInvalidValue;
  for (int l = 0; l < p.n_layers; ++l)
    if (p.grad_w[l] == nullptr || p.grad_b[l] == nullptr) return cudaErrorInvalidValue;
  const CriticGpLayout lay = critic_gp_layout(p.widths, p.n_layers, p.batch, true);
  LSDM_LAUNCH(critic_rows_kernel<T>, dim3(p.batch, 3), kThreads, stream, p, lay, false);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  long long n_elems = 0;
  for (int l = 1; l <= p.n_layers; ++l) n_elems += static_cast<long long>(p.widths[l]) * (p.widths[l - 1] + 1);
  long long blocks = (n_elems + kThreads - 1) / kThreads;
  if (blocks > 65535) blocks = 65535;  // grid-stride loop covers the rest
  LSDM_LAUNCH(critic_wgrad_kernel<T>, dim3(static_cast<unsigned>(blocks + 1)), kThreads, stream, p, lay, n_elems);
  return cudaGetLastError();
}

template <typename T>
cudaError_t critic_score_grad(const CriticGpParams<T>& p, cudaStream_t stream) {
  if (!valid(p) || p.dz == nullptr || p.score == nullptr) return cudaErrorInvalidValue;
  const CriticGpLayout lay = critic_gp_layout(p.widths, p.n_layers, p.batch, false);
  LSDM_LAUNCH(critic_rows_kernel<T>, dim3(p.batch, 1), kThreads, stream, p, lay, true);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  LSDM_LAUNCH(critic_score_mean_kernel<T>, dim3(1), kThreads, stream, p.scratch + lay.f, p.batch, p.score);
  return cudaGetLastError();
}

template cudaError_t critic_gp_step<float>(const CriticGpParams<float>&, cudaStream_t);
template cudaError_t critic_gp_step<double>(const CriticGpParams<double>&, cudaStream_t);
template cudaError_t critic_score_grad<float>(const CriticGpParams<float>&, cudaStream_t);
template cudaError_t critic_score_grad<double>(const CriticGpParams<double>&, cudaStream_t);

}  // namespace cuda
}  // namespace lsdm
