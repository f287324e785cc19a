// C entry points into the emulated critic kernels (kernels/critic_gp.cu compiled for the host),
// called through ctypes by tests/test_cuda_emulation.py with CPU tensors' data pointers.
#include "critic_gp.cuh"

namespace {
template <typename T>
lsdm::cuda::CriticGpParams<T> params(const T* const* W, const T* const* b, const int* widths, int L, int B, int dx,
                                     double slope, int precision, T* scratch) {
  lsdm::cuda::CriticGpParams<T> p;
  p.n_layers = L;
  p.batch = B;
  p.dx = dx;
  for (int l = 0; l <= L; ++l) p.widths[l] = widths[l];
  for (int l = 0; l < L; ++l) {
    p.W[l] = W[l];
    p.b[l] = b[l];
  }
  p.slope = static_cast<T>(slope);
  p.precision = static_cast<lsdm::cuda::CriticPrecision>(precision);
  p.scratch = scratch;
  return p;
}

template <typename T>
int step(const T* x, const T* zr, const T* zf, const T* t, const T* const* W, const T* const* b, const int* widths,
         int L, int B, int dx, double slope, double gp, int latent, int precision, T* scratch, T* const* gw,
         T* const* gb, T* out3) {
  auto p = params<T>(W, b, widths, L, B, dx, slope, precision, scratch);
  p.x = x;
  p.z_real = zr;
  p.z_fake = zf;
  p.t = t;
  p.gp_weight = static_cast<T>(gp);
  p.latent = latent != 0;
  for (int l = 0; l < L; ++l) {
    p.grad_w[l] = gw[l];
    p.grad_b[l] = gb[l];
  }
  p.out3 = out3;
  return static_cast<int>(lsdm::cuda::critic_gp_step<T>(p, nullptr));
}

template <typename T>
int score(const T* x, const T* z, const T* const* W, const T* const* b, const int* widths, int L, int B, int dx,
          double slope, int precision, T* scratch, T* dz, T* s) {
  auto p = params<T>(W, b, widths, L, B, dx, slope, precision, scratch);
  p.x = x;
  p.z_real = z;
  p.dz = dz;
  p.score = s;
  return static_cast<int>(lsdm::cuda::critic_score_grad<T>(p, nullptr));
}
}  // namespace

extern "C" {
long long emu_critic_scratch(const int* widths, int L, int B, int step) {
  return static_cast<long long>(lsdm::cuda::critic_gp_layout(widths, L, B, step != 0).total);
}
int emu_critic_step_f32(const float* x, const float* zr, const float* zf, const float* t, const float* const* W,
                        const float* const* b, const int* widths, int L, int B, int dx, double slope, double gp,
                        int latent, int precision, float* scratch, float* const* gw, float* const* gb, float* out3) {
  return step<float>(x, zr, zf, t, W, b, widths, L, B, dx, slope, gp, latent, precision, scratch, gw, gb, out3);
}
int emu_critic_step_f64(const double* x, const double* zr, const double* zf, const double* t, const double* const* W,
                        const double* const* b, const int* widths, int L, int B, int dx, double slope, double gp,
                        int latent, int precision, double* scratch, double* const* gw, double* const* gb,
                        double* out3) {
  return step<double>(x, zr, zf, t, W, b, widths, L, B, dx, slope, gp, latent, precision, scratch, gw, gb, out3);
}
int emu_critic_score_f32(const float* x, const float* z, const float* const* W, const float* const* b,
                         const int* widths, int L, int B, int dx, double slope, int precision, float* scratch,
                         float* dz, float* s) {
  return score<float>(x, z, W, b, widths, L, B, dx, slope, precision, scratch, dz, s);
}
int emu_critic_score_f64(const double* x, const double* z, const double* const* W, const double* const* b,
                         const int* widths, int L, int B, int dx, double slope, int precision, double* scratch,
                         double* dz, double* s) {
  return score<double>(x, z, W, b, widths, L, B, dx, slope, precision, scratch, dz, s);
}
void emu_set_order(int reverse) { lsdm_emu::set_order(reverse); }
}
