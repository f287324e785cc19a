// torch/pybind11 glue for kernels/mlp_fused.cu (fused encode and one-step generation).
// Registered into lsdm_fast._C_cuda through registry.h; used by lsdm_fast/ops/encode_generate_cuda.py,
// which packs the layers once per model (padded, operand dtype: see kernels/mlp_fused.cuh).
// No host synchronisation: inputs are checked on their metadata only (labels are validated by
// the Python entry point), and the kernel runs on the current stream.
#include <torch/extension.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
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

at::ScalarType operand_dtype(int64_t math) {
  switch (math) {
    case LSDM_MATH_TF32: return at::kFloat;
    case LSDM_MATH_BF16: return at::kBFloat16;
    case LSDM_MATH_F16: return at::kHalf;
    default: TORCH_CHECK(false, "fused MLP: math code must be 0 (tf32), 1 (bf16) or 2 (fp16), got ", math);
  }
  return at::kFloat;
}

LsdmMLPDesc shape_desc(const std::vector<int64_t>& dims, int64_t math) {
  const size_t L = dims.size() - 1;
  TORCH_CHECK(dims.size() >= 2 && L <= LSDM_MLP_MAX_LAYERS, "fused MLP: need 1..", LSDM_MLP_MAX_LAYERS,
              " layers, got ", dims.size() - 1);
  operand_dtype(math);  // checks the code
  LsdmMLPDesc d{};
  d.num_layers = static_cast<int>(L);
  d.math = static_cast<int>(math);
  for (size_t l = 0; l <= L; ++l) {
    TORCH_CHECK(dims[l] > 0 && dims[l] <= (1 << 20), "fused MLP: width ", dims[l], " out of range");
    d.dims[l] = static_cast<int>(dims[l]);
  }
  return d;
}

// The layer descriptor over packed weights (pad32(out), pad32(in)) in the operand dtype and packed
// float32 biases, all contiguous on `device`.
LsdmMLPDesc make_desc(const std::vector<at::Tensor>& weights, const std::vector<at::Tensor>& biases,
                      const std::vector<int64_t>& dims, const std::vector<int64_t>& acts,
                      const std::vector<double>& slopes, int64_t math, const at::Device& device) {
  LsdmMLPDesc d = shape_desc(dims, math);
  const size_t L = dims.size() - 1;
  TORCH_CHECK(weights.size() == L && biases.size() == L && acts.size() == L && slopes.size() == L,
              "fused MLP: weights, biases, activations and slopes must have one entry per layer (", L, ")");
  const at::ScalarType wt = operand_dtype(math);
  for (size_t l = 0; l < L; ++l) {
    const at::Tensor& w = weights[l];
    const at::Tensor& b = biases[l];
    const int64_t np = lsdm_mlp_pad(d.dims[l + 1]), kp = lsdm_mlp_pad(d.dims[l]);
    TORCH_CHECK(w.device() == device && b.device() == device, "fused MLP: layer ", l, " is not on ", device);
    TORCH_CHECK(w.scalar_type() == wt && b.scalar_type() == at::kFloat, "fused MLP: layer ", l, " must be packed as ",
                wt, " weights and float32 biases, got ", w.scalar_type(), " and ", b.scalar_type());
    TORCH_CHECK(w.dim() == 2 && w.size(0) == np && w.size(1) == kp && w.is_contiguous() && b.dim() == 1 &&
                    b.size(0) == np && b.is_contiguous(),
                "fused MLP: layer ", l, " must be packed to (", np, ", ", kp, ") and (", np, "), got ", w.sizes(),
                " and ", b.sizes());
    TORCH_CHECK(reinterpret_cast<uintptr_t>(w.data_ptr()) % 16 == 0, "fused MLP: packed weights must be 16-byte aligned");
    TORCH_CHECK(acts[l] >= LSDM_ACT_NONE && acts[l] <= LSDM_ACT_SIGMOID, "fused MLP: bad activation code ", acts[l]);
    d.weights[l] = w.data_ptr();
    d.biases[l] = b.data_ptr<float>();
    d.act[l] = static_cast<int>(acts[l]);
    d.slope[l] = static_cast<float>(slopes[l]);
  }
  return d;
}

// A 2-D tensor whose rows the kernel can read with a row stride, in a dtype it reads.
at::Tensor rows_for_kernel(at::Tensor t) {
  if (t.scalar_type() != at::kFloat && t.scalar_type() != at::kBFloat16 && t.scalar_type() != at::kHalf)
    t = t.to(at::kFloat);
  return (t.size(1) <= 1 || t.stride(1) == 1) ? t : t.contiguous();
}

int64_t mlp_tile_rows(const std::vector<int64_t>& dims, int64_t math, const at::Device& device) {
  TORCH_CHECK(device.is_cuda(), "mlp_tile_rows: device must be CUDA");
  const c10::cuda::CUDAGuard guard(device);
  int max_smem = 0;
  const cudaError_t err = cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device.index());
  TORCH_CHECK(err == cudaSuccess, "mlp_tile_rows: ", cudaGetErrorString(err));
  return lsdm_mlp_tile_rows(shape_desc(dims, math), max_smem);
}

at::Tensor mlp_forward(const std::vector<at::Tensor>& weights, const std::vector<at::Tensor>& biases,
                       const std::vector<int64_t>& dims, const std::vector<int64_t>& acts,
                       const std::vector<double>& slopes, int64_t math, const at::Tensor& y_in) {
  TORCH_CHECK(y_in.is_cuda() && y_in.dim() == 2, "mlp_forward: y must be a 2-D CUDA tensor, got ", y_in.sizes());
  const c10::cuda::CUDAGuard guard(y_in.device());
  const LsdmMLPDesc d = make_desc(weights, biases, dims, acts, slopes, math, y_in.device());
  TORCH_CHECK(y_in.size(1) == d.dims[0], "mlp_forward: y has ", y_in.size(1), " columns, the MLP takes ", d.dims[0]);
  const at::Tensor y = rows_for_kernel(y_in);
  at::Tensor out = at::empty({y.size(0), d.dims[d.num_layers]}, y.options().dtype(at::kFloat));
  const cudaError_t err = lsdm_mlp_forward(d, y.data_ptr(), dtype_code(y.scalar_type(), "y"), y.stride(0), y.size(0),
                                           out.data_ptr(), LSDM_F32, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "lsdm_mlp_forward failed: ", cudaGetErrorString(err));
  return out;
}

// Writes into `out` ((n, out_features) contiguous, float32/float64/bf16/fp16/uint8) and returns it.
at::Tensor generate(const std::vector<at::Tensor>& weights, const std::vector<at::Tensor>& biases,
                    const std::vector<int64_t>& dims, const std::vector<int64_t>& acts,
                    const std::vector<double>& slopes, int64_t math, int64_t noise_dim, int64_t cond_dim,
                    at::Tensor cond, const c10::optional<at::Tensor>& eta, uint64_t seed, int64_t row_offset,
                    at::Tensor out) {
  TORCH_CHECK(cond.is_cuda() && out.is_cuda(), "generate: cond and out must be CUDA tensors");
  TORCH_CHECK(out.device() == cond.device(), "generate: out is on ", out.device(), " but cond is on ", cond.device());
  TORCH_CHECK(out.is_contiguous() && out.dim() == 2 && out.size(0) == cond.size(0),
              "generate: out must be a contiguous (n, out_features) tensor, got ", out.sizes());
  TORCH_CHECK(row_offset >= 0, "generate: row_offset must be >= 0, got ", row_offset);
  const c10::cuda::CUDAGuard guard(cond.device());
  const LsdmMLPDesc d = make_desc(weights, biases, dims, acts, slopes, math, cond.device());
  TORCH_CHECK(noise_dim >= 0 && cond_dim >= 0 && noise_dim + cond_dim == d.dims[0], "generate: noise_dim + cond_dim = ",
              noise_dim + cond_dim, " but the generator takes ", d.dims[0]);
  TORCH_CHECK(out.size(1) == d.dims[d.num_layers], "generate: out has ", out.size(1), " columns, the decoder gives ",
              d.dims[d.num_layers]);
  const bool labels = !at::isFloatingType(cond.scalar_type());
  if (labels) {
    TORCH_CHECK(cond.dim() == 1, "generate: labels must be 1-D, got ", cond.sizes());
    if (cond.scalar_type() != at::kLong && cond.scalar_type() != at::kInt) cond = cond.to(at::kLong);
  } else {
    TORCH_CHECK(cond.dim() == 2 && cond.size(1) == cond_dim, "generate: the condition must be (n, ", cond_dim,
                "), got ", cond.sizes());
    cond = rows_for_kernel(cond);
  }
  const void* eta_ptr = nullptr;
  int eta_dtype = LSDM_F32;
  int64_t eta_stride = 0;
  at::Tensor eta_rows;
  if (eta.has_value() && eta->defined()) {
    TORCH_CHECK(eta->is_cuda() && eta->device() == cond.device() && eta->dim() == 2 && eta->size(0) == cond.size(0) &&
                    eta->size(1) == noise_dim,
                "generate: eta must be a (n, noise_dim) tensor on ", cond.device(), ", got ", eta->sizes());
    eta_rows = rows_for_kernel(*eta);
    eta_ptr = eta_rows.data_ptr();
    eta_dtype = dtype_code(eta_rows.scalar_type(), "eta");
    eta_stride = eta_rows.stride(0);
  }
  const cudaError_t err =
      lsdm_generate(d, static_cast<int>(noise_dim), static_cast<int>(cond_dim), cond.data_ptr(),
                    dtype_code(cond.scalar_type(), "cond"), cond.stride(0), eta_ptr, eta_dtype, eta_stride, seed,
                    row_offset, cond.size(0), out.data_ptr(), dtype_code(out.scalar_type(), "out"),
                    c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "lsdm_generate failed: ", cudaGetErrorString(err));
  return out;
}

at::Tensor philox_normal(uint64_t seed, int64_t row_offset, int64_t rows, int64_t cols, const at::Device& device) {
  TORCH_CHECK(device.is_cuda(), "philox_normal: device must be CUDA");
  TORCH_CHECK(rows >= 0 && cols >= 0 && cols <= INT32_MAX && row_offset >= 0, "philox_normal: bad shape or offset");
  const c10::cuda::CUDAGuard guard(device);
  at::Tensor out = at::empty({rows, cols}, at::TensorOptions().device(device).dtype(at::kFloat));
  const cudaError_t err = lsdm_philox_normal(seed, row_offset, rows, static_cast<int>(cols), out.data_ptr<float>(),
                                             c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "lsdm_philox_normal failed: ", cudaGetErrorString(err));
  return out;
}

const lsdm::Registration reg([](pybind11::module_& m) {
  m.def("mlp_tile_rows", &mlp_tile_rows, "rows per block of the fused MLP on this device (0: does not fit)",
        pybind11::arg("dims"), pybind11::arg("math"), pybind11::arg("device"));
  m.def("mlp_forward", &mlp_forward, "fused MLP forward over packed layers (float32 out)", pybind11::arg("weights"),
        pybind11::arg("biases"), pybind11::arg("dims"), pybind11::arg("acts"), pybind11::arg("slopes"),
        pybind11::arg("math"), pybind11::arg("y"));
  m.def("generate", &generate, "fused one-step generation over packed layers, into out", pybind11::arg("weights"),
        pybind11::arg("biases"), pybind11::arg("dims"), pybind11::arg("acts"), pybind11::arg("slopes"),
        pybind11::arg("math"), pybind11::arg("noise_dim"), pybind11::arg("cond_dim"), pybind11::arg("cond"),
        pybind11::arg("eta"), pybind11::arg("seed"), pybind11::arg("row_offset"), pybind11::arg("out"));
  m.def("philox_normal", &philox_normal, "Philox normal noise (the fused kernel's)", pybind11::arg("seed"),
        pybind11::arg("row_offset"), pybind11::arg("rows"), pybind11::arg("cols"), pybind11::arg("device"));
});

}  // namespace
