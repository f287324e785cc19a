// torch/pybind11 glue for kernels/mlp_fused.cu (fused encode and one-step generation).
// Registered into lsdm_fast._C_cuda through registry.h; used by lsdm_fast/ops/encode_generate_cuda.py.
#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include <string>
#include <vector>

#include "mlp_fused.cuh"
#include "registry.h"

namespace {

int dtype_code(const at::ScalarType t, const char* what) {
  switch (t) {
    case at::kFloat: return LSDM_F32;
    case at::kBFloat16: return LSDM_BF16;
    case at::kHalf: return LSDM_F16;
    case at::kByte: return LSDM_U8;
    case at::kDouble: return LSDM_F64;
    case at::kLong: return LSDM_I64;
    case at::kInt: return LSDM_I32;
    default: TORCH_CHECK(false, what, ": unsupported dtype ", t);
  }
  return -1;
}

// Builds the layer descriptor; weights/biases are converted to contiguous float32 on the
// device (kept alive in `keep` for the duration of the launch).
LsdmMLPDesc make_desc(const std::vector<torch::Tensor>& weights, const std::vector<torch::Tensor>& biases,
                      const std::vector<int64_t>& acts, const std::vector<double>& slopes,
                      const torch::Device& device, std::vector<torch::Tensor>& keep) {
  const size_t L = weights.size();
  TORCH_CHECK(L >= 1 && L <= LSDM_MLP_MAX_LAYERS, "fused MLP: need 1..", LSDM_MLP_MAX_LAYERS, " layers, got ", L);
  TORCH_CHECK(biases.size() == L && acts.size() == L && slopes.size() == L,
              "fused MLP: weights, biases, activations and slopes must have one entry per layer");
  LsdmMLPDesc d{};
  d.num_layers = static_cast<int>(L);
  for (size_t l = 0; l < L; ++l) {
    const auto& w = weights[l];
    const auto& b = biases[l];
    TORCH_CHECK(w.dim() == 2 && b.dim() == 1 && b.size(0) == w.size(0), "fused MLP: layer ", l,
                " has weight ", w.sizes(), " and bias ", b.sizes());
    if (l == 0) d.dims[0] = static_cast<int>(w.size(1));
    TORCH_CHECK(w.size(1) == d.dims[l], "fused MLP: layer ", l, " expects ", w.size(1), " inputs, previous gives ",
                d.dims[l]);
    TORCH_CHECK(acts[l] >= LSDM_ACT_NONE && acts[l] <= LSDM_ACT_SIGMOID, "fused MLP: bad activation code ", acts[l]);
    d.dims[l + 1] = static_cast<int>(w.size(0));
    keep.push_back(w.to(device, at::kFloat).contiguous());
    d.weights[l] = keep.back().data_ptr<float>();
    keep.push_back(b.to(device, at::kFloat).contiguous());
    d.biases[l] = keep.back().data_ptr<float>();
    d.act[l] = static_cast<int>(acts[l]);
    d.slope[l] = static_cast<float>(slopes[l]);
  }
  return d;
}

torch::Tensor row_major(const torch::Tensor& t) {
  return (t.dim() == 2 && (t.size(1) <= 1 || t.stride(1) == 1)) ? t : t.contiguous();
}

torch::Tensor mlp_forward(const std::vector<torch::Tensor>& weights, const std::vector<torch::Tensor>& biases,
                          const std::vector<int64_t>& acts, const std::vector<double>& slopes, torch::Tensor y) {
  TORCH_CHECK(y.is_cuda(), "mlp_forward: y must be a CUDA tensor");
  TORCH_CHECK(y.dim() == 2, "mlp_forward: y must be 2-D");
  const c10::cuda::CUDAGuard guard(y.device());
  std::vector<torch::Tensor> keep;
  const LsdmMLPDesc d = make_desc(weights, biases, acts, slopes, y.device(), keep);
  TORCH_CHECK(y.size(1) == d.dims[0], "mlp_forward: y has ", y.size(1), " columns, MLP takes ", d.dims[0]);
  if (y.scalar_type() != at::kFloat && y.scalar_type() != at::kBFloat16 && y.scalar_type() != at::kHalf)
    y = y.to(at::kFloat);
  y = row_major(y);
  auto out = torch::empty({y.size(0), d.dims[d.num_layers]}, y.options().dtype(at::kFloat));
  const cudaError_t err = lsdm_mlp_forward(d, y.data_ptr(), dtype_code(y.scalar_type(), "y"), y.stride(0), y.size(0),
                                           out.data_ptr(), LSDM_F32, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "lsdm_mlp_forward failed: ", cudaGetErrorString(err));
  return out;
}

// Writes into `out` ((n, out_features) contiguous, float32/float64/bf16/fp16/uint8) and returns it.
torch::Tensor generate(const std::vector<torch::Tensor>& weights, const std::vector<torch::Tensor>& biases,
                       const std::vector<int64_t>& acts, const std::vector<double>& slopes, int64_t noise_dim,
                       int64_t cond_dim, torch::Tensor cond, c10::optional<torch::Tensor> eta, uint64_t seed,
                       int64_t row_offset, torch::Tensor out) {
  TORCH_CHECK(cond.is_cuda() && out.is_cuda(), "generate: cond and out must be CUDA tensors");
  TORCH_CHECK(out.is_contiguous() && out.dim() == 2 && out.size(0) == cond.size(0),
              "generate: out must be a contiguous (n, out_features) tensor");
  TORCH_CHECK(row_offset >= 0, "generate: row_offset must be >= 0");
  const c10::cuda::CUDAGuard guard(cond.device());
  std::vector<torch::Tensor> keep;
  const LsdmMLPDesc d = make_desc(weights, biases, acts, slopes, cond.device(), keep);
  TORCH_CHECK(noise_dim + cond_dim == d.dims[0], "generate: noise_dim + cond_dim = ", noise_dim + cond_dim,
              " but the generator takes ", d.dims[0]);
  TORCH_CHECK(out.size(1) == d.dims[d.num_layers], "generate: out has ", out.size(1), " columns, decoder gives ",
              d.dims[d.num_layers]);
  const bool labels = !at::isFloatingType(cond.scalar_type());
  if (labels) {
    TORCH_CHECK(cond.dim() == 1, "generate: labels must be 1-D");
    if (cond.scalar_type() != at::kLong && cond.scalar_type() != at::kInt) cond = cond.to(at::kLong);
  } else {
    TORCH_CHECK(cond.dim() == 2 && cond.size(1) == cond_dim, "generate: condition must be (n, ", cond_dim, ")");
    if (cond.scalar_type() == at::kDouble) cond = cond.to(at::kFloat);
    cond = row_major(cond);
  }
  const void* eta_ptr = nullptr;
  int eta_dtype = LSDM_F32;
  int64_t eta_stride = 0;
  torch::Tensor eta_t;
  if (eta.has_value() && eta->defined()) {
    eta_t = *eta;
    TORCH_CHECK(eta_t.is_cuda() && eta_t.dim() == 2 && eta_t.size(0) == cond.size(0) && eta_t.size(1) == noise_dim,
                "generate: eta must be a CUDA (n, noise_dim) tensor");
    if (eta_t.scalar_type() != at::kFloat && eta_t.scalar_type() != at::kBFloat16 && eta_t.scalar_type() != at::kHalf)
      eta_t = eta_t.to(at::kFloat);
    eta_t = row_major(eta_t);
    eta_ptr = eta_t.data_ptr();
    eta_dtype = dtype_code(eta_t.scalar_type(), "eta");
    eta_stride = eta_t.stride(0);
  }
  const cudaError_t err = lsdm_generate(
      d, static_cast<int>(noise_dim), static_cast<int>(cond_dim), cond.data_ptr(), dtype_code(cond.scalar_type(), "cond"),
      labels ? cond.stride(0) : cond.stride(0), eta_ptr, eta_dtype, eta_stride, seed, row_offset, cond.size(0),
      out.data_ptr(), dtype_code(out.scalar_type(), "out"), c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "lsdm_generate failed: ", cudaGetErrorString(err));
  return out;
}

torch::Tensor philox_normal(uint64_t seed, int64_t row_offset, int64_t rows, int64_t cols, torch::Device device) {
  TORCH_CHECK(device.is_cuda(), "philox_normal: device must be CUDA");
  const c10::cuda::CUDAGuard guard(device);
  auto out = torch::empty({rows, cols}, torch::TensorOptions().device(device).dtype(at::kFloat));
  const cudaError_t err = lsdm_philox_normal(seed, row_offset, rows, static_cast<int>(cols), out.data_ptr<float>(),
                                             c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "lsdm_philox_normal failed: ", cudaGetErrorString(err));
  return out;
}

lsdm::Registration reg([](pybind11::module_& m) {
  m.def("mlp_forward", &mlp_forward, "fused MLP forward (float32 out)", pybind11::arg("weights"),
        pybind11::arg("biases"), pybind11::arg("acts"), pybind11::arg("slopes"), pybind11::arg("y"));
  m.def("generate", &generate, "fused one-step generation into out", pybind11::arg("weights"),
        pybind11::arg("biases"), pybind11::arg("acts"), pybind11::arg("slopes"), pybind11::arg("noise_dim"),
        pybind11::arg("cond_dim"), pybind11::arg("cond"), pybind11::arg("eta"), pybind11::arg("seed"),
        pybind11::arg("row_offset"), pybind11::arg("out"));
  m.def("philox_normal", &philox_normal, "Philox normal noise (tl.randn-compatible)", pybind11::arg("seed"),
        pybind11::arg("row_offset"), pybind11::arg("rows"), pybind11::arg("cols"), pybind11::arg("device"));
});

}  // namespace
