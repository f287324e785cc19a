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

#include <algorithm>
#include <cmath>
#include <string>
#include <tuple>
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

// u <- s(u + b) in place (u = the GEMM output, b broadcast over rows).
template <typename T>
void bias_act_inplace(Tensor& u, const Tensor& b, T slope) {
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
// slope >= 0, s(a) > 0 iff a > 0). dst may alias src or m (elementwise).
template <typename T>
void mask_apply(T* dst, const T* src, const T* m, int64_t rows, int64_t n, T slope) {
  at::parallel_for(0, rows, grain_rows(n), [&](int64_t r0, int64_t r1) {
    T* d = dst;
    const T* sr = src;
    const T* mm = m;
    const T sl = slope;
    const int64_t e = r1 * n;
#pragma omp simd
    for (int64_t i = r0 * n; i < e; ++i) d[i] = sr[i] * (mm[i] > T(0) ? T(1) : sl);
  });
}

template <typename T>
void mask_inplace(Tensor& g, const Tensor& a, int64_t a_row_off, T slope) {
  T* pg = g.mutable_data_ptr<T>();
  mask_apply<T>(pg, pg, a.const_data_ptr<T>() + a_row_off * g.size(1), g.size(0), g.size(1), slope);
}

// d[r, :] = s'(m[r, :]) * seed(r) * w: the first backward step from the scalar output.
// seed(r) = s0 for rows < B, s1 for rows in [B, 2B), s2 beyond.
template <typename T>
void delta_last(T* pd, const T* pm, const T* pw, int64_t rows, int64_t n, T slope, int64_t B, T s0, T s1,
                T s2) {
  at::parallel_for(0, rows, grain_rows(n), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T seed = r < B ? s0 : (r < 2 * B ? s1 : s2);
      const T* __restrict__ mr = pm + r * n;
      const T* __restrict__ w = pw;
      T* __restrict__ dr = pd + r * n;
      const T sl = slope;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) dr[j] = seed * w[j] * (mr[j] > T(0) ? T(1) : sl);
    }
  });
}

// A per-thread scratch buffer reused across calls (no page faults for the big intermediates
// on every step). Views into it never escape a call.
template <typename T>
Tensor workspace(int64_t numel, const at::TensorOptions& opts) {
  thread_local Tensor ws;
  if (!ws.defined() || ws.numel() < numel) ws = at::empty({numel}, opts);
  return ws;
}

template <typename T>
std::tuple<Tensor, Tensor, Tensor, std::vector<Tensor>, std::vector<Tensor>> critic_gp_impl(
    const std::vector<Tensor>& W, const std::vector<Tensor>& bias, const Tensor& x, const Tensor& zr,
    const Tensor& zf, const Tensor& t, double gp_weight, bool latent, double negative_slope) {
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
  Tensor ws = workspace<T>(total, opts);
  int64_t off = 0;
  auto take = [&](int64_t rows, int64_t cols) {
    Tensor v = ws.narrow(0, off, rows * cols).view({rows, cols});
    off += rows * cols;
    return v;
  };
  std::vector<Tensor> U(L), Delta(L);
  U[0] = take(N, d0);
  for (int64_t l = 1; l < L; ++l) {
    U[l] = take(N, n[l]);
    Delta[l] = take(N, n[l]);
  }
  Tensor G0 = take(B, d0);
  Tensor tmp_all = take(B, nmax);

  // ---- stacked input: [x, z_real; x, z_fake; x, t z_real + (1 - t) z_fake]
  {
    const T *px = x.const_data_ptr<T>(), *pr = zr.const_data_ptr<T>(), *pf = zf.const_data_ptr<T>(),
            *pt = t.const_data_ptr<T>();
    T* pu = U[0].mutable_data_ptr<T>();
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

  // ---- forward: one GEMM per layer for the three stacked batches, bias + activation fused
  for (int64_t l = 1; l < L; ++l) {
    at::mm_out(U[l], U[l - 1], W[l - 1].t());
    bias_act_inplace<T>(U[l], bias[l - 1], slope);
  }
  const Tensor wL = W[L - 1].reshape({-1});  // (n_{L-1},)
  Tensor f_rf = at::addmv(bias[L - 1], U[L - 1].narrow(0, 0, 2 * B), wL);  // (2B,)
  Tensor wasserstein = f_rf.narrow(0, 0, B).mean() - f_rf.narrow(0, B, B).mean();

  // ---- backward sweep over all 3B rows, seeded with dloss/df = -1/B (real), +1/B (fake) and
  // 1 (interpolated: the input gradient g_0 = grad_u f). s'(a_l) is read off u_l = s(a_l).
  if (L == 1) {
    G0.copy_(wL.unsqueeze(0).expand({B, d0}));
  } else {
    delta_last<T>(Delta[L - 1].mutable_data_ptr<T>(), U[L - 1].const_data_ptr<T>(), wL.const_data_ptr<T>(), N,
                  n[L - 1], slope, B, -invB, invB, T(1));
    for (int64_t l = L - 1; l > 1; --l) {
      at::mm_out(Delta[l - 1], Delta[l], W[l - 1]);  // (N, n_{l-1})
      mask_inplace<T>(Delta[l - 1], U[l - 1], 0, slope);
    }
    at::mm_out(G0, Delta[1].narrow(0, 2 * B, B), W[0]);  // (B, d0)
  }

  // ---- penalty and r_0 = gp_weight * dP/dg_0, written into the interpolated rows of U[0]
  const int64_t c0 = latent ? dx : 0;
  std::vector<double> pen_part(B);
  {
    const T* pg = G0.const_data_ptr<T>();
    T* pr0 = U[0].mutable_data_ptr<T>() + 2 * B * d0;
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
  for (int64_t l = 1; l < L; ++l) {
    Tensor r_prev = U[l - 1].narrow(0, 2 * B, B);
    Tensor tmp = tmp_all.view({-1}).narrow(0, 0, B * n[l]).view({B, n[l]});
    at::mm_out(tmp, r_prev, W[l - 1].t());
    T* ph = U[l].mutable_data_ptr<T>() + 2 * B * n[l];
    mask_apply<T>(ph, tmp.const_data_ptr<T>(), ph, B, n[l], slope);
  }

  // ---- parameter gradients: dW_l = Delta_l^T [u_{l-1} (real, fake); r_{l-1} (interp)],
  // db_l = the real and fake rows of Delta_l summed (the penalty adds nothing to biases)
  std::vector<Tensor> dW(L), db(L);
  for (int64_t l = 1; l < L; ++l) {
    dW[l - 1] = at::mm(Delta[l].t(), U[l - 1]);
    db[l - 1] = Delta[l].narrow(0, 0, 2 * B).sum(0);
  }
  Tensor seed = at::empty({N}, opts);
  seed.narrow(0, 0, B).fill_(-invB);
  seed.narrow(0, B, B).fill_(invB);
  seed.narrow(0, 2 * B, B).fill_(T(1));
  dW[L - 1] = at::mv(U[L - 1].t(), seed).unsqueeze(0);
  db[L - 1] = at::zeros({1}, opts);
  return {loss, wasserstein, penalty, dW, db};
}

std::tuple<Tensor, Tensor, Tensor, std::vector<Tensor>, std::vector<Tensor>> critic_gp_cpu(
    std::vector<Tensor> weights, std::vector<Tensor> biases, Tensor x, Tensor z_real, Tensor z_fake, Tensor t,
    double gp_weight, std::string penalty_over, double negative_slope) {
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
  auto W = contig(weights), b = contig(biases);
  Tensor xc = x.detach().contiguous(), zr = z_real.detach().contiguous(), zf = z_fake.detach().contiguous();
  Tensor tc = t.detach().reshape({-1}).to(x.scalar_type()).contiguous();
  const bool latent = penalty_over == "latent";
  if (x.scalar_type() == at::kDouble)
    return critic_gp_impl<double>(W, b, xc, zr, zf, tc, gp_weight, latent, negative_slope);
  return critic_gp_impl<float>(W, b, xc, zr, zf, tc, gp_weight, latent, negative_slope);
}

template <typename T>
std::tuple<Tensor, Tensor> score_grad_impl(const std::vector<Tensor>& W, const std::vector<Tensor>& bias,
                                           const Tensor& x, const Tensor& z, double negative_slope) {
  const int64_t L = static_cast<int64_t>(W.size());
  const int64_t B = x.size(0), dx = x.size(1), dz = z.size(1);
  const T slope = static_cast<T>(negative_slope);
  std::vector<Tensor> A(L);
  Tensor u = at::cat({x, z}, 1);
  for (int64_t l = 1; l < L; ++l) {
    A[l] = at::addmm(bias[l - 1], u, W[l - 1].t());
    Tensor nu = at::empty_like(A[l]);
    leaky_forward<T>(A[l], nu, slope);
    u = nu;
  }
  const Tensor wL = W[L - 1].reshape({-1});
  Tensor score = at::addmv(bias[L - 1], u, wL).mean();
  const T invB = T(1) / static_cast<T>(B);
  Tensor gz;
  if (L == 1) {
    gz = (wL.narrow(0, dx, dz) * invB).unsqueeze(0).expand({B, dz}).contiguous();
  } else {
    Tensor d = at::empty_like(A[L - 1]);
    delta_last<T>(d.mutable_data_ptr<T>(), A[L - 1].const_data_ptr<T>(), wL.const_data_ptr<T>(), B, A[L - 1].size(1),
                  slope, B, invB, invB, invB);
    for (int64_t l = L - 1; l > 1; --l) {
      Tensor g = at::mm(d, W[l - 1]);
      mask_inplace<T>(g, A[l - 1], 0, slope);
      d = g;
    }
    gz = at::mm(d, W[0].narrow(1, dx, dz));  // only the z columns of the input gradient
  }
  return {score, gz};
}

std::tuple<Tensor, Tensor> critic_score_grad_cpu(std::vector<Tensor> weights, std::vector<Tensor> biases,
                                                 Tensor x, Tensor z, double negative_slope) {
  at::NoGradGuard no_grad;
  check_x(x);
  check_xz(x, z, "z");
  TORCH_CHECK(negative_slope >= 0, "critic_score_grad_cpu: negative_slope must be >= 0, got ", negative_slope);
  check_mlp(weights, biases, x, x.size(1) + z.size(1));
  auto W = contig(weights), b = contig(biases);
  Tensor xc = x.detach().contiguous(), zc = z.detach().contiguous();
  if (x.scalar_type() == at::kDouble) return score_grad_impl<double>(W, b, xc, zc, negative_slope);
  return score_grad_impl<float>(W, b, xc, zc, negative_slope);
}

static lsdm::Registration reg([](pybind11::module_& m) {
  m.def("critic_gp_cpu", &critic_gp_cpu,
        "Fused WGAN-GP critic step: (loss, wasserstein, penalty, weight_grads, bias_grads).",
        pybind11::arg("weights"), pybind11::arg("biases"), pybind11::arg("x"), pybind11::arg("z_real"),
        pybind11::arg("z_fake"), pybind11::arg("t"), pybind11::arg("gp_weight"), pybind11::arg("penalty_over"),
        pybind11::arg("negative_slope"));
  m.def("critic_score_grad_cpu", &critic_score_grad_cpu, "(mean f(x, z), d mean f / dz) for the generator step.",
        pybind11::arg("weights"), pybind11::arg("biases"), pybind11::arg("x"), pybind11::arg("z"),
        pybind11::arg("negative_slope"));
});

}  // namespace
