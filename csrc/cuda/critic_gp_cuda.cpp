// torch/pybind11 glue for the fused critic step in kernels/critic_gp.cu.
//   critic_gp_step(weights, biases, x, z_real, z_fake, t, slope, gp_weight, latent, precision)
//       -> (loss, wasserstein, penalty, [dW_l], [db_l])
//   critic_score_grad(weights, biases, x, z, slope, precision) -> (mean f, d mean f / dz)
// float32 and float64 CUDA tensors; the Python side (lsdm_fast/ops/critic_gp_cuda.py) casts.
// precision (float32 only): 0 "ieee" (FMA), 1 "tf32", 2 "tf32x3". No host synchronisation:
// the scratch buffer and the outputs come from torch's caching allocator, the kernels run on
// the current stream, and the scalars are returned as views of a device tensor, so a call can
// be captured in a CUDA graph.
#include <torch/extension.h>
// c10's stream header (what at::cuda::getCurrentCUDAStream re-exports) rather than
// ATen/cuda/CUDAContext.h, which also pulls in cuBLAS/cuSPARSE headers this file does not need.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <tuple>
#include <vector>

#include "critic_gp.cuh"
#include "registry.h"

namespace {

using lsdm::cuda::CriticGpParams;
using lsdm::cuda::CriticPrecision;
using lsdm::cuda::kCriticMaxLayers;

void check_like(const at::Tensor& t, const char* name, const at::Tensor& x, int dim) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  TORCH_CHECK(t.device() == x.device(), name, " is on ", t.device(), " but x is on ", x.device());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), name, " has dtype ", t.scalar_type(), " but x has ", x.scalar_type());
  TORCH_CHECK(t.dim() == dim, name, " must be ", dim, "-D, got ", t.dim(), "-D");
}

void check_x(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.is_cuda(), op, ": x must be a CUDA tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              " supports float32 and float64, got ", x.scalar_type());
  TORCH_CHECK(x.dim() == 2 && x.size(0) > 0 && x.size(0) <= INT32_MAX, op, ": x must be (batch in [1, 2^31), dx)");
}

CriticPrecision precision_code(int64_t p) {
  TORCH_CHECK(p >= 0 && p <= 2, "precision code must be 0 (ieee), 1 (tf32) or 2 (tf32x3), got ", p);
  return static_cast<CriticPrecision>(p);
}

// Contiguous parameters and the critic's widths N_0..N_L, checked against x and the kernel's limits.
std::vector<int> prep_params(const std::vector<at::Tensor>& weights, const std::vector<at::Tensor>& biases,
                             const at::Tensor& x, int64_t n0, std::vector<at::Tensor>& w, std::vector<at::Tensor>& b) {
  TORCH_CHECK(weights.size() == biases.size(), "need as many biases as weights, got ", weights.size(), " and ",
              biases.size());
  TORCH_CHECK(weights.size() >= 2 && weights.size() <= static_cast<size_t>(kCriticMaxLayers),
              "the CUDA critic kernels support 2 to ", kCriticMaxLayers, " linear layers, got ", weights.size());
  std::vector<int> widths{static_cast<int>(n0)};
  for (size_t l = 0; l < weights.size(); ++l) {
    check_like(weights[l], "weight", x, 2);
    check_like(biases[l], "bias", x, 1);
    TORCH_CHECK(biases[l].size(0) == weights[l].size(0), "bias ", l, " has ", biases[l].size(0), " entries, weight ",
                l, " has ", weights[l].size(0), " rows");
    TORCH_CHECK(weights[l].size(1) == widths.back(), "layer ", l, " takes ", weights[l].size(1), " inputs but gets ",
                widths.back());
    TORCH_CHECK(weights[l].size(0) > 0 && weights[l].size(0) <= 65535 * 128, "layer ", l, " is too wide");
    widths.push_back(static_cast<int>(weights[l].size(0)));
    w.push_back(weights[l].contiguous());
    b.push_back(biases[l].contiguous());
  }
  TORCH_CHECK(widths.back() == 1, "the critic must have one output, has ", widths.back());
  return widths;
}

template <typename T>
void fill_common(CriticGpParams<T>& p, const std::vector<at::Tensor>& w, const std::vector<at::Tensor>& b,
                 const std::vector<int>& widths, const at::Tensor& x, double slope, int64_t precision) {
  p.n_layers = static_cast<int>(w.size());
  p.batch = static_cast<int>(x.size(0));
  p.dx = static_cast<int>(x.size(1));
  for (size_t l = 0; l < widths.size(); ++l) p.widths[l] = widths[l];
  for (int l = 0; l < p.n_layers; ++l) {
    p.W[l] = w[l].data_ptr<T>();
    p.b[l] = b[l].data_ptr<T>();
  }
  p.x = x.data_ptr<T>();
  p.slope = static_cast<T>(slope);
  p.precision = precision_code(precision);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> critic_gp_step(
    const std::vector<at::Tensor>& weights, const std::vector<at::Tensor>& biases, const at::Tensor& x_in,
    const at::Tensor& z_real_in, const at::Tensor& z_fake_in, const at::Tensor& t_in, double slope, double gp_weight,
    bool latent, int64_t precision) {
  check_x(x_in, "critic_gp_step");
  check_like(z_real_in, "z_real", x_in, 2);
  check_like(z_fake_in, "z_fake", x_in, 2);
  check_like(t_in, "t", x_in, t_in.dim() == 2 ? 2 : 1);
  const int64_t B = x_in.size(0);
  TORCH_CHECK(z_real_in.size(0) == B && z_fake_in.size(0) == B && z_real_in.size(1) == z_fake_in.size(1),
              "z_real and z_fake must both be (batch, latent_dim), got ", z_real_in.sizes(), " and ", z_fake_in.sizes());
  TORCH_CHECK(t_in.numel() == B, "t must have one value per sample, got ", t_in.sizes());
  const c10::cuda::CUDAGuard guard(x_in.device());
  std::vector<at::Tensor> w, b;
  const std::vector<int> widths = prep_params(weights, biases, x_in, x_in.size(1) + z_real_in.size(1), w, b);
  const at::Tensor x = x_in.contiguous(), zr = z_real_in.contiguous(), zf = z_fake_in.contiguous();
  const at::Tensor t = t_in.reshape({-1}).contiguous();
  const int L = static_cast<int>(w.size());
  const auto lay = lsdm::cuda::critic_gp_layout(widths.data(), L, static_cast<int>(B), true);
  const at::Tensor scratch = at::empty({static_cast<int64_t>(lay.total)}, x.options());
  int64_t n_out = 3;
  for (int l = 0; l < L; ++l) n_out += w[l].numel() + b[l].numel();
  const at::Tensor out = at::empty({n_out}, x.options());  // every element is written by the kernels
  std::vector<at::Tensor> gw, gb;
  int64_t off = 0;
  for (int l = 0; l < L; ++l) {
    gw.push_back(out.narrow(0, off, w[l].numel()).view(w[l].sizes()));
    off += w[l].numel();
  }
  for (int l = 0; l < L; ++l) {
    gb.push_back(out.narrow(0, off, b[l].numel()));
    off += b[l].numel();
  }
  const at::Tensor out3 = out.narrow(0, off, 3);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "critic_gp_step", [&] {
    CriticGpParams<scalar_t> p;
    fill_common<scalar_t>(p, w, b, widths, x, slope, precision);
    p.z_real = zr.data_ptr<scalar_t>();
    p.z_fake = zf.data_ptr<scalar_t>();
    p.t = t.data_ptr<scalar_t>();
    p.gp_weight = static_cast<scalar_t>(gp_weight);
    p.latent = latent;
    p.scratch = scratch.data_ptr<scalar_t>();
    for (int l = 0; l < L; ++l) {
      p.grad_w[l] = gw[l].data_ptr<scalar_t>();
      p.grad_b[l] = gb[l].data_ptr<scalar_t>();
    }
    p.out3 = out3.data_ptr<scalar_t>();
    const cudaError_t err = lsdm::cuda::critic_gp_step<scalar_t>(p, stream);
    TORCH_CHECK(err == cudaSuccess, "critic_gp_step launch failed: ", cudaGetErrorString(err));
  });
  return {out3[0], out3[1], out3[2], gw, gb};
}

std::tuple<at::Tensor, at::Tensor> critic_score_grad(const std::vector<at::Tensor>& weights,
                                                     const std::vector<at::Tensor>& biases, const at::Tensor& x_in,
                                                     const at::Tensor& z_in, double slope, int64_t precision) {
  check_x(x_in, "critic_score_grad");
  check_like(z_in, "z", x_in, 2);
  TORCH_CHECK(z_in.size(0) == x_in.size(0), "z must have x's batch size ", x_in.size(0), ", got ", z_in.size(0));
  const c10::cuda::CUDAGuard guard(x_in.device());
  std::vector<at::Tensor> w, b;
  const std::vector<int> widths = prep_params(weights, biases, x_in, x_in.size(1) + z_in.size(1), w, b);
  const at::Tensor x = x_in.contiguous(), z = z_in.contiguous();
  const auto lay = lsdm::cuda::critic_gp_layout(widths.data(), static_cast<int>(w.size()),
                                                static_cast<int>(x.size(0)), false);
  const at::Tensor scratch = at::empty({static_cast<int64_t>(lay.total)}, x.options());
  const at::Tensor dz = at::empty_like(z);
  const at::Tensor score = at::empty({}, x.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "critic_score_grad", [&] {
    CriticGpParams<scalar_t> p;
    fill_common<scalar_t>(p, w, b, widths, x, slope, precision);
    p.z_real = z.data_ptr<scalar_t>();
    p.scratch = scratch.data_ptr<scalar_t>();
    p.dz = dz.data_ptr<scalar_t>();
    p.score = score.data_ptr<scalar_t>();
    const cudaError_t err = lsdm::cuda::critic_score_grad<scalar_t>(p, stream);
    TORCH_CHECK(err == cudaSuccess, "critic_score_grad launch failed: ", cudaGetErrorString(err));
  });
  return {score, dz};
}

const lsdm::Registration reg([](pybind11::module_& m) {
  m.def("critic_gp_step", &critic_gp_step, "fused WGAN-GP critic step (CUDA)", pybind11::arg("weights"),
        pybind11::arg("biases"), pybind11::arg("x"), pybind11::arg("z_real"), pybind11::arg("z_fake"),
        pybind11::arg("t"), pybind11::arg("slope"), pybind11::arg("gp_weight"), pybind11::arg("latent"),
        pybind11::arg("precision"));
  m.def("critic_score_grad", &critic_score_grad, "critic score and d mean f / dz (CUDA)", pybind11::arg("weights"),
        pybind11::arg("biases"), pybind11::arg("x"), pybind11::arg("z"), pybind11::arg("slope"),
        pybind11::arg("precision"));
  m.attr("critic_max_layers") = kCriticMaxLayers;
});

}  // namespace
