// Fused WGAN-GP critic step on the CPU (backend "cpp"); maths in docs/design.md §3.
//
// Critic: u_0 = (x, z); a_l = W_l u_{l-1} + b_l, u_l = s(a_l) (l = 1..L-1, s = LeakyReLU(alpha),
// ReLU = alpha 0); f = w_L . u_{L-1} + b_L.
//
// The real, fake and interpolated batches are stacked into one (3B, d0) matrix so that every
// layer is one GEMM (MKL through at::mm) instead of three. One backward sweep over the stack
// gives delta_l = s'(a_l) * g_l for every row: for the interpolated rows g_0 = grad_u f is the
// input gradient of the penalty; for the real and fake rows delta_l, scaled by -1/B and +1/B,
// is the ordinary backward of the Wasserstein term. The penalty's double backward is one
// forward-mode sweep r_0 = dP/dg_0, r_l = s'(a_l) * (W_l r_{l-1}); then
//     dloss/dW_l = sum_rows delta_l^i m_{l-1}^i^T   with m = -u/B (real), +u/B (fake),
//                                                         gp_weight * r (interpolated)
// i.e. one GEMM per layer over all 3B rows, written into the real/fake/interp blocks of the
// forward activations (which are dead by then). dP/db_l = 0 (s'' = 0), so db_l only gets the
// Wasserstein part; db_L = 0 exactly (the mean over real minus the mean over fake of 1).
// Elementwise passes run over row blocks with at::parallel_for (OpenMP in torch's CPU build).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "registry.h"

namespace {

using at::Tensor;

// Elementwise passes are split over threads only when each chunk has real work: a parallel
// region costs a thread wake-up, far more than a 256-row pass, and much more on a shared CPU.
constexpr int64_t kGrainElems = 1 << 15;
inline int64_t grain_rows(int64_t cols) { return std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, cols)); }

void check_mlp(const std::vector<Tensor>& weights, const std::vector<Tensor>& biases, const Tensor& x,
               int64_t d0) {
  TORCH_CHECK(!weights.empty(), "critic_gp_cpu: the critic needs at least one layer");
  TORCH_CHECK(weights.size() == biases.size(), "critic_gp_cpu: got ", weights.size(), " weights but ",
              biases.size(), " biases");
  int64_t prev = d0;
  for (size_t l = 0; l < weights.size(); ++l) {
    const Tensor& w = weights[l];
    const Tensor& b = biases[l];
    TORCH_CHECK(w.dim() == 2 && b.dim() == 1 && b.size(0) == w.size(0), "critic_gp_cpu: layer ", l,
                " has weight ", w.sizes(), " and bias ", b.sizes(), "; expected (out, in) and (out,)");
    TORCH_CHECK(w.size(1) == prev, "critic_gp_cpu: layer ", l, " takes ", w.size(1), " inputs but gets ",
                prev);
    TORCH_CHECK(w.device().is_cpu() && b.device().is_cpu(), "critic_gp_cpu: layer ", l,
                " parameters must be on the CPU");
    TORCH_CHECK(w.scalar_type() == x.scalar_type() && b.scalar_type() == x.scalar_type(),
                "critic_gp_cpu: layer ", l, " parameters are ", w.scalar_type(), "/", b.scalar_type(),
                " but x is ", x.scalar_type());
    prev = w.size(0);
  }
  TORCH_CHECK(prev == 1, "critic_gp_cpu: the last layer must have 1 output, has ", prev);
}

void check_xz(const Tensor& x, const Tensor& z, const char* name) {
  TORCH_CHECK(z.dim() == 2 && z.size(0) == x.size(0), "critic_gp_cpu: ", name, " must be (batch=", x.size(0),
              ", latent_dim), got ", z.sizes());
  TORCH_CHECK(z.scalar_type() == x.scalar_type(), "critic_gp_cpu: ", name, " is ", z.scalar_type(),
              " but x is ", x.scalar_type());
  TORCH_CHECK(z.device().is_cpu(), "critic_gp_cpu: ", name, " must be on the CPU");
}

void check_x(const Tensor& x) {
  TORCH_CHECK(x.device().is_cpu(), "critic_gp_cpu: x must be on the CPU");
  TORCH_CHECK(x.dim() == 2, "critic_gp_cpu: x must be 2-D (batch, cond_dim), got ", x.sizes());
  TORCH_CHECK(x.size(0) > 0, "critic_gp_cpu: empty batch");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "critic_gp_cpu: float32 or float64 only, got ", x.scalar_type());
}

std::vector<Tensor> contig(const std::vector<Tensor>& ts) {
  std::vector<Tensor> out;
  out.reserve(ts.size());
  for (const auto& t : ts) out.push_back(t.detach().contiguous());
  return out;
}

inline uint16_t bf16_bits(float f) {  // round to nearest even; NaN stays a (quiet) NaN
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return f != f ? static_cast<uint16_t>((u >> 16) | 0x40u) : static_cast<uint16_t>(r);
}

inline float bf16_value(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Where an elementwise pass also writes the bf16 split of the rows it produces (while they are in
// cache): hi rows (leading dimension ld) and, for rows >= lo_from, lo rows; nothing when hi is null.
struct RowSplit {
  uint16_t* hi = nullptr;
  uint16_t* lo = nullptr;
  int64_t ld = 0, lo_from = 0;
};

#if defined(__AVX512BF16__)
// 16 floats to bf16 (round to nearest even) with the CPU's conversion instruction: the same values as
// bf16_bits except for float32 denormals (flushed to zero), which nothing here produces
inline __m256i bf16_16(__m512 v) { return (__m256i)_mm512_cvtneps_pbh(v); }
#endif

template <typename T>
inline void split_row(const T* src, int64_t n, const RowSplit& o, int64_t r) {
  if constexpr (std::is_same_v<T, float>) {
    if (o.hi == nullptr) return;
    uint16_t* __restrict__ h = o.hi + r * o.ld;
    uint16_t* __restrict__ l = o.lo != nullptr && r >= o.lo_from ? o.lo + r * o.ld : nullptr;
    const float* __restrict__ s = src;
    int64_t j = 0;
#if defined(__AVX512BF16__)
    for (; j + 16 <= n; j += 16) {
      const __m512 v = _mm512_loadu_ps(s + j);
      const __m256i vh = bf16_16(v);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(h + j), vh);
      if (l) {  // v - float(hi): hi's bits shifted into the upper half of each lane
        const __m512 fh = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(vh), 16));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(l + j), bf16_16(_mm512_sub_ps(v, fh)));
      }
    }
#endif
    for (; j < n; ++j) {
      h[j] = bf16_bits(s[j]);
      if (l) l[j] = bf16_bits(s[j] - bf16_value(h[j]));
    }
  }
}

// u <- s(u + b) in place (u = the GEMM output, b broadcast over rows), and u's split into `out`.
template <typename T>
void bias_act_inplace(Tensor& u, const Tensor& b, T slope, const RowSplit& out = {}) {
  T* pu = u.mutable_data_ptr<T>();
  const T* pb = b.const_data_ptr<T>();
  const int64_t n = u.size(1);
  at::parallel_for(0, u.size(0), grain_rows(n), [&](int64_t r0, int64_t r1) {
    const T* __restrict__ bb = pb;
    const T sl = slope;
    for (int64_t r = r0; r < r1; ++r) {
      T* __restrict__ ur = pu + r * n;
      // branchless: the signs are random, a branch here mispredicts half the time
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        const T v = ur[j] + bb[j];
        ur[j] = v * (v > T(0) ? T(1) : sl);
      }
      split_row<T>(ur, n, out, r);
    }
  });
}

// u = s(a), elementwise.
template <typename T>
void leaky_forward(const Tensor& a, Tensor& u, T slope) {
  const T* pa = a.const_data_ptr<T>();
  T* pu = u.mutable_data_ptr<T>();
  const int64_t n = a.size(1);
  at::parallel_for(0, a.size(0), grain_rows(n), [&](int64_t r0, int64_t r1) {
    const T* __restrict__ a = pa;
    T* __restrict__ u = pu;
    const T sl = slope;
#pragma omp simd
    for (int64_t i = r0 * n; i < r1 * n; ++i) {
      const T v = a[i];
      u[i] = v * (v > T(0) ? T(1) : sl);
    }
  });
}

// dst <- s'(.) * src, the mask read from `m` (a pre-activation, or a post-activation: for
// slope >= 0, s(a) > 0 iff a > 0), and dst's split into `out`. dst may alias src or m (elementwise).
template <typename T>
void mask_apply(T* dst, const T* src, const T* m, int64_t rows, int64_t n, T slope, const RowSplit& out = {}) {
  at::parallel_for(0, rows, grain_rows(n), [&](int64_t r0, int64_t r1) {
    const T sl = slope;
    for (int64_t r = r0; r < r1; ++r) {
      T* d = dst + r * n;
      const T* sr = src + r * n;
      const T* mm = m + r * n;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) d[j] = sr[j] * (mm[j] > T(0) ? T(1) : sl);
      split_row<T>(d, n, out, r);
    }
  });
}

template <typename T>
void mask_inplace(Tensor& g, const Tensor& a, int64_t a_row_off, T slope, const RowSplit& out = {}) {
  T* pg = g.mutable_data_ptr<T>();
  mask_apply<T>(pg, pg, a.const_data_ptr<T>() + a_row_off * g.size(1), g.size(0), g.size(1), slope, out);
}

// d[r, :] = s'(m[r, :]) * seed(r) * w: the first backward step from the scalar output.
// seed(r) = s0 for rows < B, s1 for rows in [B, 2B), s2 beyond.
template <typename T>
void delta_last(T* pd, const T* pm, const T* pw, int64_t rows, int64_t n, T slope, int64_t B, T s0, T s1,
                T s2, const RowSplit& out = {}) {
  at::parallel_for(0, rows, grain_rows(n), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T seed = r < B ? s0 : (r < 2 * B ? s1 : s2);
      const T* __restrict__ mr = pm + r * n;
      const T* __restrict__ w = pw;
      T* __restrict__ dr = pd + r * n;
      const T sl = slope;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) dr[j] = seed * w[j] * (mr[j] > T(0) ? T(1) : sl);
      split_row<T>(dr, n, out, r);
    }
  });
}

// A per-thread scratch buffer per dtype (float32, float64, bfloat16) reused across calls (no page
// faults for the big intermediates on every step). Views into it never escape a call.
Tensor workspace(int64_t numel, const at::TensorOptions& opts) {
  thread_local Tensor ws[3];
  const auto dt = opts.dtype().toScalarType();
  Tensor& w = ws[dt == at::kFloat ? 0 : dt == at::kDouble ? 1 : 2];
  if (!w.defined() || w.numel() < numel) w = at::empty({numel}, opts);
  return w;
}

// ------------------------------------------------------------------ matmul precision (float32)
//
// Each GEMM group of the critic step runs in one of three modes (the plan, chosen in
// lsdm_fast/ops/critic_gp_cpp.py): float32; bf16 (operands rounded to bfloat16, products
// accumulated and written in float32, no rounding of the output); bf16x3 (a = hi + lo with
// hi = bf16(a), lo = bf16(a - hi); hi.hi + hi.lo + lo.hi: about 2^-16 relative per product;
// a float32 GEMM where the bf16 GEMMs are emulated).
// bfloat16 GEMMs with float32 output run through MKL's cblas_gemm_bf16bf16f32 (AMX or
// AVX512-BF16 where the CPU has them), found at load time in libtorch_cpu (a weak symbol: a
// torch built without MKL leaves it null). Without it, or with `native` off, a bf16 GEMM is a
// float32 GEMM of the bf16-rounded operands (the same numbers: exact products, float32
// accumulation) and a bf16x3 GEMM a float32 one: for CPUs without bf16 units and for tests.
enum Mm : int64_t { kF32 = 0, kBF16 = 1, kBF16x3 = 2 };
enum Group : int { kFwdRF = 0, kFwdI, kBwdRF, kBwdI, kRSweep, kDW, kGroups };
struct Plan {
  Mm g[kGroups] = {kF32, kF32, kF32, kF32, kF32, kF32};
  bool native = false;
  bool any(Mm m) const { return std::any_of(g, g + kGroups, [m](Mm v) { return v == m; }); }
};

Plan make_plan(const std::vector<int64_t>& modes, bool native) {
  Plan p;
  TORCH_CHECK(modes.empty() || modes.size() == kGroups, "critic_gp_cpu: the matmul plan needs ", int(kGroups),
              " modes (forward real/fake, forward interpolated, backward real/fake, backward interpolated, ",
              "r sweep, weight gradients), got ", modes.size());
  for (size_t i = 0; i < modes.size(); ++i) {
    TORCH_CHECK(modes[i] >= kF32 && modes[i] <= kBF16x3, "critic_gp_cpu: matmul mode ", modes[i],
                " is not 0 (float32), 1 (bf16) or 2 (bf16x3)");
    p.g[i] = static_cast<Mm>(modes[i]);
  }
  p.native = native;
  return p;
}

}  // namespace

extern "C" void cblas_gemm_bf16bf16f32(int layout, int transa, int transb, int m, int n, int k, float alpha,
                                       const void* a, int lda, const void* b, int ldb, float beta, float* c,
                                       int ldc) __attribute__((weak));

namespace {

constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;  // CBLAS_LAYOUT / CBLAS_TRANSPOSE

// hi = bf16(src), lo = bf16(src - hi) (lo may be undefined); src (rows, cols) with unit column
// stride, hi/lo rows of the same shape with one row stride.
void split_bf16(const Tensor& src, const Tensor& hi, const Tensor& lo) {
  const int64_t rows = src.size(0), cols = src.size(1), ld = src.stride(0);
  const float* ps = src.const_data_ptr<float>();
  const RowSplit out{reinterpret_cast<uint16_t*>(hi.mutable_data_ptr<at::BFloat16>()),
                     lo.defined() ? reinterpret_cast<uint16_t*>(lo.mutable_data_ptr<at::BFloat16>()) : nullptr,
                     hi.stride(0), 0};
  TORCH_INTERNAL_ASSERT(!lo.defined() || lo.stride(0) == hi.stride(0), "split_bf16: hi/lo layout");
  at::parallel_for(0, rows, grain_rows(cols), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) split_row<float>(ps + r * ld, cols, out, r);
  });
}

// MKL's bf16 GEMM, checked once on a product whose float32 result is exact: an MKL with
// 64-bit integers (ILP64) or another signature would fail here and leave the emulation.
bool mkl_bf16_works() {
  static const bool ok = [] {
    if (cblas_gemm_bf16bf16f32 == nullptr) return false;
    const float a[6] = {1.5f, -2.f, 3.f, 0.25f, 4.f, -1.f}, b[6] = {2.f, 1.f, -0.5f, 3.f, 1.f, 2.f};
    uint16_t ah[6], bh[6];
    for (int i = 0; i < 6; ++i) ah[i] = bf16_bits(a[i]), bh[i] = bf16_bits(b[i]);
    float c[4] = {7.f, 7.f, 7.f, 7.f};
    cblas_gemm_bf16bf16f32(kRowMajor, kNoTrans, kNoTrans, 2, 2, 3, 1.f, ah, 3, bh, 2, 0.f, c, 2);  // (2x3)(3x2)
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 2; ++j) {
        float want = 0;
        for (int k = 0; k < 3; ++k) want += a[i * 3 + k] * b[k * 2 + j];
        if (c[i * 2 + j] != want) return false;
      }
    return true;
  }();
  return ok;
}

// A matrix operand: float32 (or float64) values and, where a bf16 GEMM reads it, their bf16
// split (hi, and lo for bf16x3). Views: rows() and t() act on every form alike.
struct Mat {
  Tensor f, hi, lo;
  Mat rows(int64_t r0, int64_t n) const {
    auto nr = [&](const Tensor& a) { return a.defined() ? a.narrow(0, r0, n) : a; };
    return {nr(f), nr(hi), nr(lo)};
  }
  Mat t() const {
    auto tr = [](const Tensor& a) { return a.defined() ? a.t() : a; };
    return {tr(f), tr(hi), tr(lo)};
  }
};

// (transposed?, leading dimension) of a 2-D view as a row-major CBLAS operand
inline std::pair<int, int> cblas_view(const Tensor& a) {
  if (a.stride(1) == 1 && a.stride(0) >= std::max<int64_t>(1, a.size(1)))
    return {kNoTrans, static_cast<int>(a.stride(0))};
  TORCH_INTERNAL_ASSERT(a.stride(0) == 1 && a.stride(1) >= std::max<int64_t>(1, a.size(0)), "bf16 gemm: layout");
  return {kTrans, static_cast<int>(a.stride(1))};
}

// C (contiguous rows) = beta C + A B, bf16 operands, float32 accumulation and output
void mm_bf16(const Tensor& C, const Tensor& A, const Tensor& B, float beta, bool native) {
  if (!native) {
    if (beta == 0.f) at::mm_out(const_cast<Tensor&>(C), A.to(at::kFloat), B.to(at::kFloat));
    else C.addmm_(A.to(at::kFloat), B.to(at::kFloat));
    return;
  }
  const auto [ta, lda] = cblas_view(A);
  const auto [tb, ldb] = cblas_view(B);
  TORCH_INTERNAL_ASSERT(C.stride(1) == 1, "bf16 gemm: output layout");
  cblas_gemm_bf16bf16f32(kRowMajor, ta, tb, static_cast<int>(C.size(0)), static_cast<int>(C.size(1)),
                         static_cast<int>(A.size(1)), 1.f, A.const_data_ptr(), lda, B.const_data_ptr(), ldb, beta,
                         C.mutable_data_ptr<float>(), static_cast<int>(C.stride(0)));
}

// C = A B in `mode` (C: contiguous rows, written, not accumulated). Without bf16 units a bf16x3 GEMM is
// a float32 one: more accurate than three emulated products and a third of their cost.
void gemm(const Tensor& C, const Mat& A, const Mat& B, Mm mode, bool native) {
  if (mode == kF32 || (mode == kBF16x3 && !native)) {
    at::mm_out(const_cast<Tensor&>(C), A.f, B.f);
    return;
  }
  TORCH_INTERNAL_ASSERT(A.hi.defined() && B.hi.defined(), "bf16 gemm: operand not split");
  mm_bf16(C, A.hi, B.hi, 0.f, native);
  if (mode == kBF16x3) {
    TORCH_INTERNAL_ASSERT(A.lo.defined() && B.lo.defined(), "bf16x3 gemm: operand not split");
    mm_bf16(C, A.hi, B.lo, 1.f, native);
    mm_bf16(C, A.lo, B.hi, 1.f, native);
  }
}

// Rows [r0, r0 + n) of C = A B, the first `split` of them in mode m0 and the rest in m1 (one GEMM
// when the modes agree).
void gemm_rows(const Tensor& C, const Mat& A, const Mat& B, int64_t split, Mm m0, Mm m1, bool native) {
  const int64_t n = C.size(0);
  if (m0 == m1 || split <= 0 || split >= n) {
    gemm(C, A, B, split <= 0 ? m1 : m0, native);
    return;
  }
  gemm(C.narrow(0, 0, split), A.rows(0, split), B, m0, native);
  gemm(C.narrow(0, split, n - split), A.rows(split, n - split), B, m1, native);
}

// Bfloat16 scratch handed out in slices, like the float workspace.
struct Bf16Arena {
  Tensor ws;
  int64_t off = 0;
  Tensor take(int64_t rows, int64_t cols) {
    Tensor v = ws.narrow(0, off, rows * cols).view({rows, cols});
    off += rows * cols;
    return v;
  }
};

// m.hi (and m.lo when `lo`) from m.f, into fresh arena slices
void split_into(Mat& m, Bf16Arena& arena, bool lo) {
  m.hi = arena.take(m.f.size(0), m.f.size(1));
  m.lo = lo ? arena.take(m.f.size(0), m.f.size(1)) : Tensor();
  split_bf16(m.f, m.hi, m.lo);
}

// m's split allocated in the arena (lo too when `lo`), to be written by the pass that produces m.f
void alloc_split(Mat& m, Bf16Arena& arena, bool lo) {
  m.hi = arena.take(m.f.size(0), m.f.size(1));
  m.lo = lo ? arena.take(m.f.size(0), m.f.size(1)) : Tensor();
}

// The RowSplit that writes m's split from row r0 on (pass row r = row r0 + r of m), lo for pass rows
// >= lo_from where m has a lo; nothing where m has no split.
RowSplit split_at(const Mat& m, int64_t r0, int64_t lo_from) {
  if (!m.hi.defined()) return {};
  auto p = [&](const Tensor& a) {
    return a.defined() ? reinterpret_cast<uint16_t*>(a.mutable_data_ptr<at::BFloat16>()) + r0 * a.stride(0) : nullptr;
  };
  return {p(m.hi), p(m.lo), m.hi.stride(0), lo_from};
}

template <typename T>
std::tuple<Tensor, Tensor, Tensor, std::vector<Tensor>, std::vector<Tensor>> critic_gp_impl(
    const std::vector<Tensor>& W, const std::vector<Tensor>& bias, const Tensor& x, const Tensor& zr,
    const Tensor& zf, const Tensor& t, double gp_weight, bool latent, double negative_slope, const Plan& P) {
  const int64_t L = static_cast<int64_t>(W.size());
  const int64_t B = x.size(0), dx = x.size(1), dz = zr.size(1), d0 = dx + dz, N = 3 * B;
  const T slope = static_cast<T>(negative_slope);
  const T invB = T(1) / static_cast<T>(B);
  auto opts = x.options();

  // ---- scratch: U[l] (N, n_l) activations (their interpolated rows later hold r_l),
  // Delta[l] (N, n_l) seeded backward adjoints, G0 (B, d0), tmp (B, max n_l)
  std::vector<int64_t> n(L);
  n[0] = d0;
  for (int64_t l = 1; l < L; ++l) n[l] = W[l - 1].size(0);
  int64_t nmax = d0, total = N * d0 + B * d0;
  for (int64_t l = 1; l < L; ++l) {
    total += 2 * N * n[l];
    nmax = std::max(nmax, n[l]);
  }
  total += B * nmax;
  Tensor ws = workspace(total, opts);
  int64_t off = 0;
  auto take = [&](int64_t rows, int64_t cols) {
    Tensor v = ws.narrow(0, off, rows * cols).view({rows, cols});
    off += rows * cols;
    return v;
  };
  std::vector<Mat> U(L), Delta(L), Wm(L);
  U[0].f = take(N, d0);
  for (int64_t l = 1; l < L; ++l) {
    U[l].f = take(N, n[l]);
    Delta[l].f = take(N, n[l]);
  }
  Tensor G0 = take(B, d0);
  Tensor tmp_all = take(B, nmax);
  for (int64_t l = 0; l < L; ++l) Wm[l].f = W[l];

  // ---- bf16 splits, written by the passes that produce the values: of the weights, of U[0..L-2]
  // (operands of the forward, the r sweep and the weight gradients) and of Delta[1..L-1] (the
  // backward sweep and the weight gradients); lo parts only for the rows a bf16x3 GEMM reads
  const Mm* g = P.g;
  const bool bf16 = P.any(kBF16) || P.any(kBF16x3);
  const auto x3 = [&](Group k) { return g[k] == kBF16x3; };
  const bool lo_w = P.any(kBF16x3) && P.native;  // emulated bf16x3 GEMMs read the float32 values
  const int64_t lo_u_from = !P.native ? N : x3(kFwdRF) || x3(kDW) ? 0 : x3(kFwdI) ? 2 * B : N;  // activations
  const bool lo_r = P.native && (x3(kRSweep) || x3(kDW));  // r_l in the interpolated rows
  const bool lo_u = lo_u_from < N || lo_r;
  const int64_t lo_d_from = !P.native ? N : x3(kBwdRF) || x3(kDW) ? 0 : x3(kBwdI) ? 2 * B : N;
  const bool lo_d = lo_d_from < N;
  Bf16Arena arena;
  if (bf16) {
    int64_t need = 0;
    for (int64_t l = 0; l < L; ++l) need += (lo_w ? 2 : 1) * W[l].numel();
    for (int64_t l = 0; l + 1 < L; ++l) need += (lo_u ? 2 : 1) * N * n[l];
    for (int64_t l = 1; l < L; ++l) need += (lo_d ? 2 : 1) * N * n[l];
    arena.ws = workspace(need, opts.dtype(at::kBFloat16));
    for (int64_t l = 0; l < L; ++l) split_into(Wm[l], arena, lo_w);
    for (int64_t l = 1; l + 1 < L; ++l) alloc_split(U[l], arena, lo_u);
    for (int64_t l = 1; l < L; ++l) alloc_split(Delta[l], arena, lo_d);
  }

  // ---- stacked input: [x, z_real; x, z_fake; x, t z_real + (1 - t) z_fake]
  {
    const T *px = x.const_data_ptr<T>(), *pr = zr.const_data_ptr<T>(), *pf = zf.const_data_ptr<T>(),
            *pt = t.const_data_ptr<T>();
    T* pu = U[0].f.mutable_data_ptr<T>();
    at::parallel_for(0, B, grain_rows(3 * d0), [&](int64_t r0, int64_t r1) {
      for (int64_t i = r0; i < r1; ++i) {
        T* ur = pu + i * d0;
        T* uf = pu + (B + i) * d0;
        T* uh = pu + (2 * B + i) * d0;
        const T* xi = px + i * dx;
        for (int64_t j = 0; j < dx; ++j) ur[j] = uf[j] = uh[j] = xi[j];
        const T ti = pt[i], si = T(1) - ti;
        const T* zri = pr + i * dz;
        const T* zfi = pf + i * dz;
        for (int64_t j = 0; j < dz; ++j) {
          ur[dx + j] = zri[j];
          uf[dx + j] = zfi[j];
          uh[dx + j] = ti * zri[j] + si * zfi[j];
        }
      }
    });
  }
  if (bf16 && L > 1) split_into(U[0], arena, lo_u);

  // ---- forward: one GEMM per layer for the three stacked batches, bias + activation fused
  for (int64_t l = 1; l < L; ++l) {
    gemm_rows(U[l].f, U[l - 1], Wm[l - 1].t(), 2 * B, g[kFwdRF], g[kFwdI], P.native);
    bias_act_inplace<T>(U[l].f, bias[l - 1], slope, split_at(U[l], 0, lo_u_from));
  }
  const Tensor wL = W[L - 1].reshape({-1});  // (n_{L-1},)
  Tensor f_rf = at::addmv(bias[L - 1], U[L - 1].f.narrow(0, 0, 2 * B), wL);  // (2B,)
  Tensor wasserstein = f_rf.narrow(0, 0, B).mean() - f_rf.narrow(0, B, B).mean();

  // ---- backward sweep over all 3B rows, seeded with dloss/df = -1/B (real), +1/B (fake) and
  // 1 (interpolated: the input gradient g_0 = grad_u f). s'(a_l) is read off u_l = s(a_l).
  if (L == 1) {
    G0.copy_(wL.unsqueeze(0).expand({B, d0}));
  } else {
    delta_last<T>(Delta[L - 1].f.mutable_data_ptr<T>(), U[L - 1].f.const_data_ptr<T>(), wL.const_data_ptr<T>(),
                  N, n[L - 1], slope, B, -invB, invB, T(1), split_at(Delta[L - 1], 0, lo_d_from));
    for (int64_t l = L - 1; l > 1; --l) {
      gemm_rows(Delta[l - 1].f, Delta[l], Wm[l - 1], 2 * B, g[kBwdRF], g[kBwdI], P.native);  // (N, n_{l-1})
      mask_inplace<T>(Delta[l - 1].f, U[l - 1].f, 0, slope, split_at(Delta[l - 1], 0, lo_d_from));
    }
    gemm(G0, Delta[1].rows(2 * B, B), Wm[0], g[kBwdI], P.native);  // (B, d0)
  }

  // ---- penalty and r_0 = gp_weight * dP/dg_0, written into the interpolated rows of U[0]
  const int64_t c0 = latent ? dx : 0;
  std::vector<double> pen_part(B);
  {
    const T* pg = G0.const_data_ptr<T>();
    T* pr0 = U[0].f.mutable_data_ptr<T>() + 2 * B * d0;
    const double gp = gp_weight;
    at::parallel_for(0, B, grain_rows(3 * d0), [&](int64_t r0, int64_t r1) {
      for (int64_t i = r0; i < r1; ++i) {
        const T* gi = pg + i * d0;
        T* ri = pr0 + i * d0;
        double ss = 0;
        for (int64_t j = c0; j < d0; ++j) ss += static_cast<double>(gi[j]) * gi[j];
        const double nrm = std::sqrt(ss);
        pen_part[i] = (nrm - 1) * (nrm - 1);
        // d/dg (||g|| - 1)^2 / B = 2 (||g|| - 1) g / (B ||g||); 0 at g = 0 as torch's norm.
        const T k = nrm > 0 ? static_cast<T>(gp * 2.0 * (nrm - 1) / (static_cast<double>(B) * nrm)) : T(0);
        for (int64_t j = 0; j < c0; ++j) ri[j] = T(0);
        for (int64_t j = c0; j < d0; ++j) ri[j] = k * gi[j];
      }
    });
  }
  double pen_sum = 0;
  for (int64_t i = 0; i < B; ++i) pen_sum += pen_part[i];
  Tensor penalty = at::scalar_tensor(pen_sum / static_cast<double>(B), opts);
  Tensor loss = gp_weight * penalty - wasserstein;

  // ---- r sweep (interpolated rows): r_l = s'(a_l) * (W_l r_{l-1}), into U[l]'s interpolated block
  // (and its bf16 split, which the next step and the weight gradients read)
  if (bf16 && L > 1) {
    const Mat r0 = U[0].rows(2 * B, B);
    split_bf16(r0.f, r0.hi, lo_r ? r0.lo : Tensor());
  }
  for (int64_t l = 1; l < L; ++l) {
    Tensor tmp = tmp_all.view({-1}).narrow(0, 0, B * n[l]).view({B, n[l]});
    gemm(tmp, U[l - 1].rows(2 * B, B), Wm[l - 1].t(), g[kRSweep], P.native);
    T* ph = U[l].f.mutable_data_ptr<T>() + 2 * B * n[l];
    mask_apply<T>(ph, tmp.const_data_ptr<T>(), ph, B, n[l], slope, split_at(U[l], 2 * B, lo_r ? 0 : B));
  }

  // ---- parameter gradients: dW_l = Delta_l^T [u_{l-1} (real, fake); r_{l-1} (interp)],
  // db_l = the real and fake rows of Delta_l summed (the penalty adds nothing to biases)
  std::vector<Tensor> dW(L), db(L);
  for (int64_t l = 1; l < L; ++l) {
    dW[l - 1] = at::empty({n[l], n[l - 1]}, opts);
    gemm(dW[l - 1], Delta[l].t(), U[l - 1], g[kDW], P.native);
    db[l - 1] = Delta[l].f.narrow(0, 0, 2 * B).sum(0);
  }
  Tensor seed = at::empty({N}, opts);
  seed.narrow(0, 0, B).fill_(-invB);
  seed.narrow(0, B, B).fill_(invB);
  seed.narrow(0, 2 * B, B).fill_(T(1));
  dW[L - 1] = at::mv(U[L - 1].f.t(), seed).unsqueeze(0);
  db[L - 1] = at::zeros({1}, opts);
  return {loss, wasserstein, penalty, dW, db};
}

std::tuple<Tensor, Tensor, Tensor, std::vector<Tensor>, std::vector<Tensor>> critic_gp_cpu(
    std::vector<Tensor> weights, std::vector<Tensor> biases, Tensor x, Tensor z_real, Tensor z_fake, Tensor t,
    double gp_weight, std::string penalty_over, double negative_slope, std::vector<int64_t> matmul_plan,
    bool native_bf16) {
  at::NoGradGuard no_grad;
  check_x(x);
  check_xz(x, z_real, "z_real");
  check_xz(x, z_fake, "z_fake");
  TORCH_CHECK(z_real.size(1) == z_fake.size(1), "critic_gp_cpu: z_real and z_fake differ in width: ",
              z_real.size(1), " vs ", z_fake.size(1));
  TORCH_CHECK(penalty_over == "joint" || penalty_over == "latent",
              "critic_gp_cpu: penalty_over must be 'joint' or 'latent', got '", penalty_over, "'");
  TORCH_CHECK(t.numel() == x.size(0), "critic_gp_cpu: t must have one value per sample (", x.size(0),
              "), got shape ", t.sizes());
  TORCH_CHECK(t.device().is_cpu(), "critic_gp_cpu: t must be on the CPU");
  TORCH_CHECK(negative_slope >= 0, "critic_gp_cpu: negative_slope must be >= 0, got ", negative_slope);
  check_mlp(weights, biases, x, x.size(1) + z_real.size(1));
  const Plan plan = make_plan(matmul_plan, native_bf16 && mkl_bf16_works());
  auto W = contig(weights), b = contig(biases);
  Tensor xc = x.detach().contiguous(), zr = z_real.detach().contiguous(), zf = z_fake.detach().contiguous();
  Tensor tc = t.detach().reshape({-1}).to(x.scalar_type()).contiguous();
  const bool latent = penalty_over == "latent";
  if (x.scalar_type() == at::kDouble)  // float64 is float64 whatever the plan
    return critic_gp_impl<double>(W, b, xc, zr, zf, tc, gp_weight, latent, negative_slope, Plan{});
  return critic_gp_impl<float>(W, b, xc, zr, zf, tc, gp_weight, latent, negative_slope, plan);
}

template <typename T>
std::tuple<Tensor, Tensor> score_grad_impl(const std::vector<Tensor>& W, const std::vector<Tensor>& bias,
                                           const Tensor& x, const Tensor& z, double negative_slope, Mm fwd, Mm bwd,
                                           bool native) {
  const int64_t L = static_cast<int64_t>(W.size());
  const int64_t B = x.size(0), dx = x.size(1), dz = z.size(1);
  const T slope = static_cast<T>(negative_slope);
  const bool bf16 = fwd != kF32 || bwd != kF32, lo = native && (fwd == kBF16x3 || bwd == kBF16x3);
  // every operand split afresh (fresh tensors: this op's intermediates are small)
  auto split = [&](Mat& m) {
    if (!bf16) return;
    m.hi = at::empty(m.f.sizes(), m.f.options().dtype(at::kBFloat16));
    m.lo = lo ? at::empty_like(m.hi) : Tensor();
    split_bf16(m.f, m.hi, m.lo);
  };
  std::vector<Mat> Wm(L);
  for (int64_t l = 0; l < L; ++l) {
    Wm[l].f = W[l];
    if (l + 1 < L) split(Wm[l]);
  }
  std::vector<Tensor> A(L);
  Mat u{at::cat({x, z}, 1)};
  for (int64_t l = 1; l < L; ++l) {
    if (fwd != kF32) {
      split(u);
      A[l] = at::empty({B, W[l - 1].size(0)}, x.options());
      gemm(A[l], u, Wm[l - 1].t(), fwd, native);
      A[l].add_(bias[l - 1]);
    } else {
      A[l] = at::addmm(bias[l - 1], u.f, W[l - 1].t());
    }
    Tensor nu = at::empty_like(A[l]);
    leaky_forward<T>(A[l], nu, slope);
    u = Mat{nu};
  }
  const Tensor wL = W[L - 1].reshape({-1});
  Tensor score = at::addmv(bias[L - 1], u.f, wL).mean();
  const T invB = T(1) / static_cast<T>(B);
  Tensor gz;
  if (L == 1) {
    gz = (wL.narrow(0, dx, dz) * invB).unsqueeze(0).expand({B, dz}).contiguous();
  } else {
    Mat d{at::empty_like(A[L - 1])};
    delta_last<T>(d.f.mutable_data_ptr<T>(), A[L - 1].const_data_ptr<T>(), wL.const_data_ptr<T>(), B,
                  A[L - 1].size(1), slope, B, invB, invB, invB);
    for (int64_t l = L - 1; l > 1; --l) {
      if (bwd != kF32) split(d);
      Tensor g = at::empty({B, W[l - 1].size(1)}, x.options());
      gemm(g, d, Wm[l - 1], bwd, native);
      mask_inplace<T>(g, A[l - 1], 0, slope);
      d = Mat{g};
    }
    if (bwd != kF32) split(d);
    const Mat w0z{Wm[0].f.narrow(1, dx, dz), bf16 ? Wm[0].hi.narrow(1, dx, dz) : Tensor(),
                  lo ? Wm[0].lo.narrow(1, dx, dz) : Tensor()};
    gz = at::empty({B, dz}, x.options());
    gemm(gz, d, w0z, bwd, native);  // only the z columns of the input gradient
  }
  return {score, gz};
}

std::tuple<Tensor, Tensor> critic_score_grad_cpu(std::vector<Tensor> weights, std::vector<Tensor> biases,
                                                 Tensor x, Tensor z, double negative_slope,
                                                 std::vector<int64_t> matmul_plan, bool native_bf16) {
  at::NoGradGuard no_grad;
  check_x(x);
  check_xz(x, z, "z");
  TORCH_CHECK(negative_slope >= 0, "critic_score_grad_cpu: negative_slope must be >= 0, got ", negative_slope);
  TORCH_CHECK(matmul_plan.empty() || matmul_plan.size() == 2,
              "critic_score_grad_cpu: the matmul plan needs 2 modes (forward, backward), got ", matmul_plan.size());
  for (auto m : matmul_plan)
    TORCH_CHECK(m >= kF32 && m <= kBF16x3, "critic_score_grad_cpu: matmul mode ", m,
                " is not 0 (float32), 1 (bf16) or 2 (bf16x3)");
  check_mlp(weights, biases, x, x.size(1) + z.size(1));
  auto W = contig(weights), b = contig(biases);
  Tensor xc = x.detach().contiguous(), zc = z.detach().contiguous();
  if (x.scalar_type() == at::kDouble) return score_grad_impl<double>(W, b, xc, zc, negative_slope, kF32, kF32, false);
  const Mm fwd = matmul_plan.empty() ? kF32 : static_cast<Mm>(matmul_plan[0]);
  const Mm bwd = matmul_plan.empty() ? kF32 : static_cast<Mm>(matmul_plan[1]);
  return score_grad_impl<float>(W, b, xc, zc, negative_slope, fwd, bwd, native_bf16 && mkl_bf16_works());
}

static lsdm::Registration reg([](pybind11::module_& m) {
  m.def("critic_gp_cpu", &critic_gp_cpu,
        "Fused WGAN-GP critic step: (loss, wasserstein, penalty, weight_grads, bias_grads). matmul_plan: "
        "float32 GEMMs' mode per group (0 float32, 1 bf16, 2 bf16x3; empty: all float32); native_bf16: run "
        "bf16 GEMMs on MKL's bf16 kernels where available, else emulate them with float32 GEMMs.",
        pybind11::arg("weights"), pybind11::arg("biases"), pybind11::arg("x"), pybind11::arg("z_real"),
        pybind11::arg("z_fake"), pybind11::arg("t"), pybind11::arg("gp_weight"), pybind11::arg("penalty_over"),
        pybind11::arg("negative_slope"), pybind11::arg("matmul_plan") = std::vector<int64_t>{},
        pybind11::arg("native_bf16") = false);
  m.def("critic_score_grad_cpu", &critic_score_grad_cpu,
        "(mean f(x, z), d mean f / dz) for the generator step. matmul_plan: (forward, backward) modes as "
        "critic_gp_cpu's.",
        pybind11::arg("weights"), pybind11::arg("biases"), pybind11::arg("x"), pybind11::arg("z"),
        pybind11::arg("negative_slope"), pybind11::arg("matmul_plan") = std::vector<int64_t>{},
        pybind11::arg("native_bf16") = false);
  m.def("bf16_gemm_native", &mkl_bf16_works,
        "Whether MKL's bf16 GEMM with float32 output (cblas_gemm_bf16bf16f32) is linked and passes its check.");
});

}  // namespace
