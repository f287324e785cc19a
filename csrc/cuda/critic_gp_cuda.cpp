// torch/pybind11 glue for the fused critic step in kernels/critic_gp.cu.
//   critic_gp_step(weights, biases, x, z_real, z_fake, t, slope, gp_weight, latent)
//       -> (loss, wasserstein, penalty, [dW_l], [db_l])
//   critic_score_grad(weights, biases, x, z, slope) -> (mean f, d mean f / dz)
// float32 and float64 CUDA tensors; the Python side (lsdm_fast/ops/critic_gp_cuda.py) casts.
#include <torch/extension.h>
// c10's stream header (what at::cuda::getCurrentCUDAStream re-exports) rather than
// ATen/cuda/CUDAContext.h, which also pulls in cuBLAS/cuSPARSE headers this file does not need.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <string>
#include <tuple>
#include <vector>

#include "critic_gp.cuh"
#include "registry.h"

namespace {

void check_tensor(const at::Tensor& t, const char* name, const at::Tensor& like, int dim) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  TORCH_CHECK(t.device() == like.device(), name, " is on ", t.device(), " but x is on ", like.device());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), name, " has dtype ", t.scalar_type(), " but x has ",
              like.scalar_type());
  TORCH_CHECK(t.dim() == dim, name, " must be ", dim, "-D, got ", t.dim(), "-D");
}

template <typename T>
void fill_common(lsdm::cuda::CriticGpParams<T>& p, const std::vector<at::Tensor>& w,
                 const std::vector<at::Tensor>& b, const at::Tensor& x, int64_t n0) {
  p.n_layers = static_cast<int>(w.size());
  p.batch = static_cast<int>(x.size(0));
  p.dx = static_cast<int>(x.size(1));
  p.widths[0] = static_cast<int>(n0);
  for (int l = 0; l < p.n_layers; ++l) {
    p.W[l] = w[l].data_ptr<T>();
    p.b[l] = b[l].data_ptr<T>();
    p.widths[l + 1] = static_cast<int>(w[l].size(0));
  }
  p.x = x.data_ptr<T>();
}

// contiguous copies of the parameters, checked
void prep_params(const std::vector<at::Tensor>& weights, const std::vector<at::Tensor>& biases, const at::Tensor& x,
                 std::vector<at::Tensor>& w, std::vector<at::Tensor>& b) {
  TORCH_CHECK(weights.size() == biases.size(), "need as many biases as weights");
  TORCH_CHECK(weights.size() >= 2 && weights.size() <= static_cast<size_t>(lsdm::cuda::kCriticMaxLayers),
              "the CUDA critic step supports 2 to 4 linear layers, got ", weights.size());
  int64_t prev = -1;
  for (size_t l = 0; l < weights.size(); ++l) {
    check_tensor(weights[l], "weight", x, 2);
    check_tensor(biases[l], "bias", x, 1);
    TORCH_CHECK(biases[l].size(0) == weights[l].size(0), "bias ", l, " does not match weight ", l);
    TORCH_CHECK(prev < 0 || weights[l].size(1) == prev, "layer ", l, " expects ", weights[l].size(1),
                " inputs but gets ", prev);
    prev = weights[l].size(0);
    w.push_back(weights[l].contiguous());
    b.push_back(biases[l].contiguous());
  }
  TORCH_CHECK(prev == 1, "the critic must have one output, has ", prev);
  for (size_t l = 0; l + 1 < w.size(); ++l)
    TORCH_CHECK(w[l].size(0) <= INT32_MAX, "layer too wide");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> critic_gp_step(
    const std::vector<at::Tensor>& weights, const std::vector<at::Tensor>& biases, const at::Tensor& x_in,
    const at::Tensor& z_real_in, const at::Tensor& z_fake_in, const at::Tensor& t_in, double slope,
    double gp_weight, bool latent) {
  TORCH_CHECK(x_in.is_cuda(), "x must be a CUDA tensor");
  TORCH_CHECK(x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kDouble,
              "critic_gp_step supports float32 and float64, got ", x_in.scalar_type());
  TORCH_CHECK(x_in.dim() == 2 && x_in.size(0) > 0, "x must be (batch > 0, dx)");
  check_tensor(z_real_in, "z_real", x_in, 2);
  check_tensor(z_fake_in, "z_fake", x_in, 2);
  TORCH_CHECK(t_in.is_cuda() && t_in.scalar_type() == x_in.scalar_type() && t_in.numel() == x_in.size(0),
              "t must be a CUDA tensor of x's dtype with one value per sample");
  const int64_t B = x_in.size(0);
  TORCH_CHECK(B <= INT32_MAX, "batch too large");
  TORCH_CHECK(z_real_in.size(0) == B && z_fake_in.size(0) == B && z_real_in.size(1) == z_fake_in.size(1),
              "z_real and z_fake must both be (batch, latent_dim)");
  const c10::cuda::CUDAGuard guard(x_in.device());
  std::vector<at::Tensor> w, b;
  prep_params(weights, biases, x_in, w, b);
  const int64_t n0 = x_in.size(1) + z_real_in.size(1);
  TORCH_CHECK(w[0].size(1) == n0, "critic takes ", w[0].size(1), " inputs but x and z give ", n0);
  at::Tensor x = x_in.contiguous(), zr = z_real_in.contiguous(), zf = z_fake_in.contiguous();
  at::Tensor t = t_in.reshape({-1}).contiguous();

  const int L = static_cast<int>(w.size());
  int widths[lsdm::cuda::kCriticMaxLayers + 1];
  widths[0] = static_cast<int>(n0);
  int64_t nw = 0, nb = 0;
  for (int l = 0; l < L; ++l) {
    widths[l + 1] = static_cast<int>(w[l].size(0));
    nw += w[l].numel();
    nb += b[l].numel();
  }
  const auto lay = lsdm::cuda::critic_gp_layout(widths, L, static_cast<int>(B), true);
  at::Tensor scratch = at::empty({static_cast<int64_t>(lay.total)}, x.options());
  at::Tensor out = at::empty({nw + nb + 3}, x.options());  // every element is written by the kernel
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
  at::Tensor out3 = out.narrow(0, off, 3);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "critic_gp_step", [&] {
    lsdm::cuda::CriticGpParams<scalar_t> p;
    fill_common<scalar_t>(p, w, b, x, n0);
    p.z_real = zr.data_ptr<scalar_t>();
    p.z_fake = zf.data_ptr<scalar_t>();
    p.t = t.data_ptr<scalar_t>();
    p.slope = static_cast<scalar_t>(slope);
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
                                                     const at::Tensor& z_in, double slope) {
  TORCH_CHECK(x_in.is_cuda(), "x must be a CUDA tensor");
  TORCH_CHECK(x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kDouble,
              "critic_score_grad supports float32 and float64, got ", x_in.scalar_type());
  TORCH_CHECK(x_in.dim() == 2 && x_in.size(0) > 0, "x must be (batch > 0, dx)");
  check_tensor(z_in, "z", x_in, 2);
  TORCH_CHECK(z_in.size(0) == x_in.size(0), "z must have x's batch size");
  const c10::cuda::CUDAGuard guard(x_in.device());
  std::vector<at::Tensor> w, b;
  prep_params(weights, biases, x_in, w, b);
  const int64_t n0 = x_in.size(1) + z_in.size(1);
  TORCH_CHECK(w[0].size(1) == n0, "critic takes ", w[0].size(1), " inputs but x and z give ", n0);
  at::Tensor x = x_in.contiguous(), z = z_in.contiguous();
  const int L = static_cast<int>(w.size());
  int widths[lsdm::cuda::kCriticMaxLayers + 1];
  widths[0] = static_cast<int>(n0);
  for (int l = 0; l < L; ++l) widths[l + 1] = static_cast<int>(w[l].size(0));
  const auto lay = lsdm::cuda::critic_gp_layout(widths, L, static_cast<int>(x.size(0)), false);
  at::Tensor scratch = at::empty({static_cast<int64_t>(lay.total)}, x.options());
  at::Tensor dz = at::empty_like(z);
  at::Tensor score = at::empty({}, x.options());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "critic_score_grad", [&] {
    lsdm::cuda::CriticGpParams<scalar_t> p;
    fill_common<scalar_t>(p, w, b, x, n0);
    p.z_real = z.data_ptr<scalar_t>();
    p.slope = static_cast<scalar_t>(slope);
    p.scratch = scratch.data_ptr<scalar_t>();
    p.dz = dz.data_ptr<scalar_t>();
    p.score = score.data_ptr<scalar_t>();
    const cudaError_t err = lsdm::cuda::critic_score_grad<scalar_t>(p, stream);
    TORCH_CHECK(err == cudaSuccess, "critic_score_grad launch failed: ", cudaGetErrorString(err));
  });
  return {score, dz};
}

static lsdm::Registration reg([](pybind11::module_& m) {
  m.def("critic_gp_step", &critic_gp_step, "fused WGAN-GP critic step (CUDA)", pybind11::arg("weights"),
        pybind11::arg("biases"), pybind11::arg("x"), pybind11::arg("z_real"), pybind11::arg("z_fake"),
        pybind11::arg("t"), pybind11::arg("slope"), pybind11::arg("gp_weight"), pybind11::arg("latent"));
  m.def("critic_score_grad", &critic_score_grad, "critic score and d mean f / dz (CUDA)",
        pybind11::arg("weights"), pybind11::arg("biases"), pybind11::arg("x"), pybind11::arg("z"),
        pybind11::arg("slope"));
});

}  // namespace
