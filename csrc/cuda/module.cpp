// The CUDA extension lsdm_fast._C_cuda: torch/pybind11 glue over the raw-pointer launch
// functions in kernels/*.cu. Each glue file registers its bindings through registry.h.
#include <torch/extension.h>
#include <string>
#include "registry.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "lsdm_fast CUDA kernels";
  m.def("build_info", []() {
    pybind11::dict d;
    d["cuda"] = true;
    d["torch_version"] = std::string(TORCH_VERSION);
    return d;
  });
  for (auto& bind : lsdm::bindings()) bind(m);
}
