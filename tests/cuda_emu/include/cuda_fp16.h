// Emulated __half: IEEE binary16 through GCC's _Float16 (conversions round to nearest even).
#pragma once
#include <cstdint>
#include <cstring>
struct __half {
  uint16_t bits;
};
inline __half __float2half(float f) {
  const _Float16 h = static_cast<_Float16>(f);
  __half r;
  std::memcpy(&r.bits, &h, 2);
  return r;
}
inline float __half2float(__half h) {
  _Float16 v;
  std::memcpy(&v, &h.bits, 2);
  return static_cast<float>(v);
}
