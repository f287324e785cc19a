// Lets each translation unit add its bindings to the one extension module without editing
// module.cpp:   static lsdm::Registration reg([](pybind11::module_& m) { m.def(...); });
#pragma once
#include <functional>
#include <vector>
#include <pybind11/pybind11.h>

namespace lsdm {
using BindFn = std::function<void(pybind11::module_&)>;

inline std::vector<BindFn>& bindings() {
  static std::vector<BindFn> fns;  // function-local: safe against static-init order
  return fns;
}

struct Registration {
  explicit Registration(BindFn fn) { bindings().push_back(std::move(fn)); }
};
}  // namespace lsdm
