// The CPU extension lsdm_fast._C: build information plus every kernel registered through
// registry.h.
#include <torch/extension.h>
#include <string>
#ifdef _OPENMP
#include <omp.h>
#endif
#include "registry.h"

namespace {
pybind11::dict build_info() {
  pybind11::dict d;
#if defined(__clang__)
  d["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  d["compiler"] = std::string("gcc ") + __VERSION__;
#else
  d["compiler"] = std::string("unknown");
#endif
#ifdef _OPENMP
  d["openmp"] = true;
  d["openmp_max_threads"] = omp_get_max_threads();
#else
  d["openmp"] = false;
  d["openmp_max_threads"] = 1;
#endif
  d["cuda"] = false;
  d["torch_version"] = std::string(TORCH_VERSION);
  d["cplusplus"] = static_cast<long>(__cplusplus);
  return d;
}
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "lsdm_fast C++ CPU kernels";
  m.def("build_info", &build_info, "How this extension was built: compiler, OpenMP, torch version.");
  for (auto& bind : lsdm::bindings()) bind(m);
}
