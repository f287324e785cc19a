// One stage-1 step of the patch autoencoder on the CPU (backend "cpp" of ops.autoencoder_loss_grads):
// forward, loss and the gradient of every parameter, by hand, no autograd graph.
//
// Shapes (N images, C channels, side H, stride S, L = H/S, P = L*L positions, W channels per position,
// Q = 4 S^2 C values per (2S)x(2S) patch, d latents, R = N*P rows):
//   cols  = im2col(y)                          (R, Q)   patch (c, ky, kx) of every position, zero padded
//   e_0   = s(cols Wc^T + bc)                  (R, W)   the encoder's convolution
//   e_k   = s(e_{k-1} M_k^T + b_k), k = 1..K   (R, W)   per-position layers; rows (n, i, j), channels fastest
//   z     = e_K.view(N, P W) Fe^T + be         (N, d)
//   z_in  = z + noise * std_batch(z) * eps     (the noise term carries no gradient: std of z.detach())
//   g_0   = s(z_in Fd^T + bd).view(R, W);  g_k = s(g_{k-1} M'_k^T + b'_k)
//   patch = g_K Tc                             (R, Q)   Tc = the transposed convolution's weight (W, Q)
//   logit = col2im(patch) + bt                 (N, C, H, H): the overlap-add of the patches
//   loss  = mean BCE-with-logits(logit, y) (or mean (sigmoid(logit) - y)^2) + latent_l2 mean z^2
// Backward: G = dloss/dlogit is one fused pass with the loss; d patch = im2col(G) (the gather that
// matches the overlap-add); every per-position layer's LeakyReLU backward is fused with its bias
// gradient (a column sum) in one pass over the rows; every weight gradient is one GEMM (MKL through
// at::mm). s = LeakyReLU(slope >= 0), whose derivative is read off its output (s(a) > 0 iff a > 0).
// The buffers live in a per-thread workspace reused across calls; elementwise passes split their rows
// over at::parallel_for in a fixed number of chunks (sums reduced in chunk order: the same thread count
// gives the same bits).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "registry.h"

namespace {

using at::Tensor;

// A parallel region costs a thread wake-up: only passes of at least this many elements per chunk split.
constexpr int64_t kGrainElems = 1 << 15;
// Column sums add rows into a T accumulator this many at a time, then into a double one: float32 bias
// gradients over 10^4 rows keep ~1e-7 relative accuracy.
constexpr int64_t kSumBlock = 64;

int64_t n_chunks(int64_t rows, int64_t cols) {
  const int64_t by_work = std::max<int64_t>(1, rows * cols / kGrainElems);
  return std::max<int64_t>(1, std::min<int64_t>({static_cast<int64_t>(at::get_num_threads()), by_work, rows}));
}

// f(chunk, row_begin, row_end) for `nc` fixed chunks of `rows` (inline when nc == 1: no parallel region).
template <typename F>
void for_chunks(int64_t nc, int64_t rows, const F& f) {
  if (nc == 1) {
    f(int64_t(0), int64_t(0), rows);
    return;
  }
  at::parallel_for(0, nc, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) f(c, rows * c / nc, rows * (c + 1) / nc);
  });
}

template <typename T>
Tensor workspace(int64_t numel, const at::TensorOptions& opts) {
  thread_local Tensor ws;  // per T (one instantiation each); views never escape a call
  if (!ws.defined() || ws.numel() < numel) ws = at::empty({numel}, opts);
  return ws;
}

// exp(x) for x <= 0 in float, written to vectorise (neither std::exp nor std::floor does without -ffast-math):
// Cephes' range reduction x = n ln2 + r and its degree-5 polynomial, n rounded by the 1.5 * 2^23 shift, 2^n
// from the exponent bits; x is clamped at -87 (exp = 1.6e-38 there, below anything the loss or its gradient
// can see). Max relative error 8e-8 on [-87, 0].
inline float exp_nonpositive(float x) {
  x = x > -87.0f ? x : -87.0f;
  constexpr float kRound = 12582912.0f;
  const float shifted = x * 1.44269504088896341f + kRound;
  const float n = shifted - kRound;
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * r * r + r + 1.0f;
  const int32_t k = std::bit_cast<int32_t>(shifted) - std::bit_cast<int32_t>(kRound);
  return e * std::bit_cast<float>((k + 127) << 23);
}

// log1p(e) for e in [0, 1] in float: 2 atanh(s) with s = e / (2 + e) in [0, 1/3] (no cancellation), the
// odd series to s^15 (max relative error 2e-7 on [0, 1]).
inline float log1p_unit(float e) {
  const float s = e / (2.0f + e), w = s * s;
  float p = 1.0f / 15;
  p = p * w + 1.0f / 13;
  p = p * w + 1.0f / 11;
  p = p * w + 1.0f / 9;
  p = p * w + 1.0f / 7;
  p = p * w + 1.0f / 5;
  p = p * w + 1.0f / 3;
  p = p * w + 1.0f;
  return 2.0f * s * p;
}

template <typename T>
inline T exp_neg_abs(T l) {
  if constexpr (std::is_same_v<T, float>) return exp_nonpositive(-std::abs(l));
  else return std::exp(-std::abs(l));
}

template <typename T>
inline T log1p_of(T e) {
  if constexpr (std::is_same_v<T, float>) return log1p_unit(e);
  else return std::log1p(e);
}

// The (2S)-wide row segments that im2col copies and col2im adds, with the patch width as a compile-time
// constant for the common strides (kW > 0: the interior segments become a few whole-vector moves) or a run-time
// one (kW = 0). Columns [lo, hi) of a segment lie inside the image.
template <typename T, int64_t kW>
struct Segment {
  // im2col: d (patch row) <- s (image row), zeros outside [lo, hi); s == nullptr: the row is outside the image
  static inline void gather(T* __restrict__ d, const T* __restrict__ s, int64_t lo, int64_t hi, int64_t w) {
    const int64_t n = kW > 0 ? kW : w;
    if (s == nullptr) {
      for (int64_t k = 0; k < n; ++k) d[k] = T(0);
    } else if (lo == 0 && hi == n) {
      for (int64_t k = 0; k < n; ++k) d[k] = s[k];
    } else {
      for (int64_t k = 0; k < n; ++k) d[k] = (k >= lo && k < hi) ? s[k] : T(0);
    }
  }
  // col2im: d (image row) += s (patch row) on [lo, hi); d == nullptr: the row is cropped
  static inline void scatter_add(T* __restrict__ d, const T* __restrict__ s, int64_t lo, int64_t hi, int64_t w) {
    const int64_t n = kW > 0 ? kW : w;
    if (d == nullptr) return;
    if (lo == 0 && hi == n) {
      for (int64_t k = 0; k < n; ++k) d[k] += s[k];
    } else {
      for (int64_t k = lo; k < hi; ++k) d[k] += s[k];
    }
  }
};

// Visits every (2S)-wide row segment of every stride-S position's (2S)x(2S) patch (padding S/2) of images
// (N, C, H, H), pairing the segment's place in the patch matrix (N*L*L, Q), entries in (c, ky, kx) order, with
// the image row it covers: visit(patch_offset, inside, image_offset, lo, hi) (inside: the row lies in the
// image; the offset is that of column x0 = S j - S/2, which may be negative: only [lo, hi) is read). Images are
// independent, so they split over threads (the scatter's writes never meet).
template <typename F>
void for_each_segment(int64_t N, int64_t C, int64_t H, int64_t S, const F& visit) {
  const int64_t L = H / S, K2 = 2 * S, Q = C * K2 * K2, half = S / 2;
  for_chunks(n_chunks(N, L * L * Q), N, [&](int64_t, int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t i = 0; i < L; ++i)
        for (int64_t j = 0; j < L; ++j) {
          const int64_t row = ((n * L + i) * L + j) * Q, x0 = S * j - half;
          const int64_t lo = std::max<int64_t>(0, -x0), hi = std::min<int64_t>(K2, H - x0);
          for (int64_t c = 0; c < C; ++c)
            for (int64_t ky = 0; ky < K2; ++ky) {
              const int64_t yy = S * i + ky - half;
              visit(row + (c * K2 + ky) * K2, yy >= 0 && yy < H, ((n * C + c) * H + yy) * H + x0, lo, hi);
            }
        }
  });
}

// patches (N*L*L, Q) <- the (2S)x(2S) patch of every stride-S position of images (N, C, H, H), zeros outside:
// the encoder's im2col, and the gather that is the adjoint of col2im_add.
template <typename T, int64_t kW>
void im2col_w(const T* images, T* patches, int64_t N, int64_t C, int64_t H, int64_t S) {
  for_each_segment(N, C, H, S, [&](int64_t p, bool inside, int64_t im, int64_t lo, int64_t hi) {
    Segment<T, kW>::gather(patches + p, inside ? images + im : nullptr, lo, hi, 2 * S);
  });
}

// images (N, C, H, H) += the overlap-add of patches (N*L*L, Q), the parts outside the images cropped: the
// transposed convolution's col2im.
template <typename T, int64_t kW>
void col2im_add_w(const T* patches, T* images, int64_t N, int64_t C, int64_t H, int64_t S) {
  for_each_segment(N, C, H, S, [&](int64_t p, bool inside, int64_t im, int64_t lo, int64_t hi) {
    Segment<T, kW>::scatter_add(inside ? images + im : nullptr, patches + p, lo, hi, 2 * S);
  });
}

template <typename T>
void im2col(const T* images, T* patches, int64_t N, int64_t C, int64_t H, int64_t S) {
  RECORD_FUNCTION("patch_ae::im2col", std::vector<c10::IValue>());
  switch (S) {
    case 2: return im2col_w<T, 4>(images, patches, N, C, H, S);
    case 4: return im2col_w<T, 8>(images, patches, N, C, H, S);
    case 8: return im2col_w<T, 16>(images, patches, N, C, H, S);
    default: return im2col_w<T, 0>(images, patches, N, C, H, S);
  }
}

template <typename T>
void col2im_add(const T* patches, T* images, int64_t N, int64_t C, int64_t H, int64_t S) {
  RECORD_FUNCTION("patch_ae::col2im_add", std::vector<c10::IValue>());
  switch (S) {
    case 2: return col2im_add_w<T, 4>(patches, images, N, C, H, S);
    case 4: return col2im_add_w<T, 8>(patches, images, N, C, H, S);
    case 8: return col2im_add_w<T, 16>(patches, images, N, C, H, S);
    default: return col2im_add_w<T, 0>(patches, images, N, C, H, S);
  }
}

// h <- s(h + b) in place, b broadcast over the rows: the epilogue of a forward GEMM.
template <typename T>
void bias_act(T* h, const T* b, int64_t rows, int64_t cols, T slope) {
  RECORD_FUNCTION("patch_ae::bias_act", std::vector<c10::IValue>());
  for_chunks(n_chunks(rows, cols), rows, [&](int64_t, int64_t r0, int64_t r1) {
    // locals, not the captured references: a load under the select would keep the loop from vectorising
    const T sl = slope;
    const int64_t n = cols;
    for (int64_t r = r0; r < r1; ++r) {
      T* __restrict__ hr = h + r * n;
      const T* __restrict__ bb = b;
      // branchless: the signs are random, a branch here mispredicts half the time
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        const T v = hr[j] + bb[j];
        hr[j] = v * (v > T(0) ? T(1) : sl);
      }
    }
  });
}

// Column sums of the rows a chunk produces: T blocks of kSumBlock rows into double totals per chunk,
// chunks added in order. `part` holds nc * cols doubles + nc * cols T.
template <typename T>
struct ColumnSums {
  int64_t nc, cols;
  double* total;  // (nc, cols)
  T* block;       // (nc, cols)
  ColumnSums(int64_t nc_, int64_t cols_, void* part) : nc(nc_), cols(cols_) {
    total = static_cast<double*>(part);
    block = reinterpret_cast<T*>(total + nc * cols);
  }
  void start(int64_t c) {
    std::fill(total + c * cols, total + (c + 1) * cols, 0.0);
    std::fill(block + c * cols, block + (c + 1) * cols, T(0));
  }
  void flush(int64_t c) {
    double* t = total + c * cols;
    T* b = block + c * cols;
    for (int64_t j = 0; j < cols; ++j) {
      t[j] += b[j];
      b[j] = T(0);
    }
  }
  void reduce_into(T* out) const {
    for (int64_t j = 0; j < cols; ++j) {
      double s = 0;
      for (int64_t c = 0; c < nc; ++c) s += total[c * cols + j];
      out[j] = static_cast<T>(s);
    }
  }
};

template <typename T>
size_t column_sums_bytes(int64_t nc, int64_t cols) {
  return static_cast<size_t>(nc * cols) * (sizeof(double) + sizeof(T));
}

// g <- s'(.) * g in place, the mask read off the layer's output h; db = the column sums of the result
// (the bias gradient). The LeakyReLU backward and the bias gradient in one pass.
template <typename T>
void act_backward_colsum(T* g, const T* h, int64_t rows, int64_t cols, T slope, T* db, std::vector<char>& part) {
  RECORD_FUNCTION("patch_ae::act_backward_colsum", std::vector<c10::IValue>());
  const int64_t nc = n_chunks(rows, cols);
  part.resize(column_sums_bytes<T>(nc, cols));
  ColumnSums<T> sums(nc, cols, part.data());
  for_chunks(nc, rows, [&](int64_t c, int64_t r0, int64_t r1) {
    sums.start(c);
    T* __restrict__ acc = sums.block + c * cols;
    const T sl = slope;
    const int64_t n = cols;
    for (int64_t r = r0; r < r1; ++r) {
      T* __restrict__ gr = g + r * n;
      const T* __restrict__ hr = h + r * n;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        const T v = gr[j] * (hr[j] > T(0) ? T(1) : sl);
        gr[j] = v;
        acc[j] += v;
      }
      if ((r - r0 + 1) % kSumBlock == 0) sums.flush(c);
    }
    sums.flush(c);
  });
  sums.reduce_into(db);
}

// The reconstruction loss over logits (N, C, H*H) against targets y (same layout), and in place of the
// logits its gradient G = dloss/dlogit (the mean over N*C*H*H values); db[c] = sum of G over channel c (the
// transposed convolution's bias gradient). bce: softplus(l) - y l = max(l, 0) - y l + log1p(exp(-|l|)),
// G = (sigmoid(l) - y) / M; mse: (sigmoid(l) - y)^2, G = 2 (sigmoid(l) - y) sigmoid'(l) / M.
template <typename T>
double loss_and_grad(T* img, const T* y, int64_t N, int64_t C, int64_t HW, bool bce, T* db, std::vector<char>& part) {
  RECORD_FUNCTION("patch_ae::loss_and_grad", std::vector<c10::IValue>());
  const int64_t nc = n_chunks(N, C * HW);
  part.resize(column_sums_bytes<T>(nc, C) + nc * sizeof(double));
  ColumnSums<T> sums(nc, C, part.data());
  double* loss_part = reinterpret_cast<double*>(part.data() + column_sums_bytes<T>(nc, C));
  const T inv_m = T(1) / static_cast<T>(static_cast<double>(N) * C * HW);
  for_chunks(nc, N, [&](int64_t ch, int64_t n0, int64_t n1) {
    sums.start(ch);
    double total = 0;
    const T inv = inv_m;
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t c = 0; c < C; ++c) {
        T* __restrict__ l = img + (n * C + c) * HW;
        const T* __restrict__ t = y + (n * C + c) * HW;
        T lsum = 0, gsum = 0;
        if (bce) {
#pragma omp simd reduction(+ : lsum, gsum)
          for (int64_t k = 0; k < HW; ++k) {
            const T v = l[k], e = exp_neg_abs(v), r = T(1) / (T(1) + e);
            const T sig = (v >= T(0) ? T(1) : e) * r;
            lsum += (v > T(0) ? v : T(0)) - t[k] * v + log1p_of(e);
            const T g = (sig - t[k]) * inv;
            l[k] = g;
            gsum += g;
          }
        } else {
#pragma omp simd reduction(+ : lsum, gsum)
          for (int64_t k = 0; k < HW; ++k) {
            const T v = l[k], e = exp_neg_abs(v), r = T(1) / (T(1) + e);
            const T sig = (v >= T(0) ? T(1) : e) * r;
            const T diff = sig - t[k];
            lsum += diff * diff;
            const T g = T(2) * diff * sig * (T(1) - sig) * inv;
            l[k] = g;
            gsum += g;
          }
        }
        total += lsum;
        sums.total[ch * C + c] += gsum;
      }
    loss_part[ch] = total;
  });
  sums.reduce_into(db);
  double loss = 0;
  for (int64_t c = 0; c < nc; ++c) loss += loss_part[c];
  return loss / (static_cast<double>(N) * C * HW);
}

struct Shapes {
  int64_t N, C, H, S, L, P, W, Q, d, K, R, F;
};

template <typename T>
std::tuple<Tensor, Tensor, Tensor, std::vector<Tensor>> step_impl(const Tensor& y, const std::vector<Tensor>& p,
                                                                  const Shapes& s, T slope, double latent_l2,
                                                                  bool bce, double latent_noise,
                                                                  const std::optional<Tensor>& noise) {
  const int64_t N = s.N, C = s.C, H = s.H, S = s.S, W = s.W, Q = s.Q, d = s.d, K = s.K, R = s.R,
                F = s.F;
  auto opts = y.options();
  // parameters, in the modules' order (see patch_ae_step_cpu)
  const Tensor &enc_conv_w = p[0], &enc_conv_b = p[1];
  const Tensor &enc_fc_w = p[2 + 2 * K], &enc_fc_b = p[3 + 2 * K];
  const int64_t o = 4 + 2 * K;
  const Tensor &dec_fc_w = p[o], &dec_fc_b = p[o + 1];
  const Tensor &dec_conv_w = p[o + 2 + 2 * K], &dec_conv_b = p[o + 3 + 2 * K];
  std::vector<Tensor> enc_mix_w(K), enc_mix_b(K), dec_mix_w(K), dec_mix_b(K);
  for (int64_t k = 0; k < K; ++k) {
    enc_mix_w[k] = p[2 + 2 * k];
    enc_mix_b[k] = p[3 + 2 * k];
    dec_mix_w[k] = p[o + 2 + 2 * k];
    dec_mix_b[k] = p[o + 3 + 2 * k];
  }

  // ---- workspace: cols, encoder activations e_0..e_K, decoder activations g_0..g_K, patches (later
  // d patches), the image-sized logits (later G), two row-gradient buffers, z, z_in, dz
  const int64_t act = R * W;
  const int64_t total = R * Q + 2 * (K + 1) * act + R * Q + N * H * H * C + 2 * act + 3 * N * d;
  Tensor ws = workspace<T>(total, opts);
  int64_t off = 0;
  auto take = [&](int64_t rows, int64_t cols) {
    Tensor v = ws.narrow(0, off, rows * cols).view({rows, cols});
    off += rows * cols;
    return v;
  };
  Tensor cols = take(R, Q);
  std::vector<Tensor> e(K + 1), g(K + 1);
  for (auto& t : e) t = take(R, W);
  for (auto& t : g) t = take(R, W);
  Tensor patches = take(R, Q);
  Tensor img = take(N, C * H * H);
  Tensor grad_a = take(R, W), grad_b = take(R, W);
  Tensor z = take(N, d), z_in_buf = take(N, d), dz = take(N, d);
  std::vector<char> part;

  // ---- encoder
  im2col<T>(y.const_data_ptr<T>(), cols.mutable_data_ptr<T>(), N, C, H, S);
  at::mm_out(e[0], cols, enc_conv_w.t());
  bias_act<T>(e[0].mutable_data_ptr<T>(), enc_conv_b.const_data_ptr<T>(), R, W, slope);
  for (int64_t k = 1; k <= K; ++k) {
    at::mm_out(e[k], e[k - 1], enc_mix_w[k - 1].t());
    bias_act<T>(e[k].mutable_data_ptr<T>(), enc_mix_b[k - 1].const_data_ptr<T>(), R, W, slope);
  }
  Tensor e_flat = e[K].view({N, F});
  at::mm_out(z, e_flat, enc_fc_w.t());
  T* pz = z.mutable_data_ptr<T>();
  {
    const T* b = enc_fc_b.const_data_ptr<T>();
    for (int64_t n = 0; n < N; ++n)
      for (int64_t j = 0; j < d; ++j) pz[n * d + j] += b[j];
  }
  double zsq = 0;
  for (int64_t i = 0; i < N * d; ++i) zsq += static_cast<double>(pz[i]) * pz[i];
  zsq /= static_cast<double>(N * d);

  // ---- z_in = z + latent_noise * std_batch(z) * eps (unbiased std, as torch's z.std(0))
  Tensor z_in = z;
  if (latent_noise > 0) {
    z_in = z_in_buf;
    T* pzi = z_in.mutable_data_ptr<T>();
    const T* eps = noise->const_data_ptr<T>();
    for (int64_t j = 0; j < d; ++j) {
      double m = 0, v = 0;
      for (int64_t n = 0; n < N; ++n) m += pz[n * d + j];
      m /= static_cast<double>(N);
      for (int64_t n = 0; n < N; ++n) v += (pz[n * d + j] - m) * (pz[n * d + j] - m);
      const T k = static_cast<T>(latent_noise * std::sqrt(v / static_cast<double>(N - 1)));
      for (int64_t n = 0; n < N; ++n) pzi[n * d + j] = pz[n * d + j] + k * eps[n * d + j];
    }
  }

  // ---- decoder
  Tensor g_flat = g[0].view({N, F});
  at::mm_out(g_flat, z_in, dec_fc_w.t());
  bias_act<T>(g[0].mutable_data_ptr<T>(), dec_fc_b.const_data_ptr<T>(), N, F, slope);
  for (int64_t k = 1; k <= K; ++k) {
    at::mm_out(g[k], g[k - 1], dec_mix_w[k - 1].t());
    bias_act<T>(g[k].mutable_data_ptr<T>(), dec_mix_b[k - 1].const_data_ptr<T>(), R, W, slope);
  }
  at::mm_out(patches, g[K], dec_conv_w);
  T* pimg = img.mutable_data_ptr<T>();
  {
    const T* bt = dec_conv_b.const_data_ptr<T>();
    const int64_t HW = H * H;
    for_chunks(n_chunks(N, C * HW), N, [&](int64_t, int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n)
        for (int64_t c = 0; c < C; ++c) std::fill(pimg + (n * C + c) * HW, pimg + (n * C + c + 1) * HW, bt[c]);
    });
  }
  col2im_add<T>(patches.const_data_ptr<T>(), pimg, N, C, H, S);

  // ---- loss; img <- G = dloss/dlogit; d bias of the transposed convolution
  Tensor d_dec_conv_b = at::empty({C}, opts);
  const double rec = loss_and_grad<T>(pimg, y.const_data_ptr<T>(), N, C, H * H, bce, d_dec_conv_b.mutable_data_ptr<T>(),
                                      part);

  // ---- decoder backward
  im2col<T>(pimg, patches.mutable_data_ptr<T>(), N, C, H, S);  // d patches: the gather adjoint to col2im
  Tensor d_dec_conv_w = at::mm(g[K].t(), patches);           // (W, Q)
  at::mm_out(grad_a, patches, dec_conv_w.t());               // d g_K
  std::vector<Tensor> d_dec_mix_w(K), d_dec_mix_b(K), d_enc_mix_w(K), d_enc_mix_b(K);
  Tensor* ga = &grad_a;
  Tensor* gb = &grad_b;
  for (int64_t k = K; k >= 1; --k) {
    d_dec_mix_b[k - 1] = at::empty({W}, opts);
    act_backward_colsum<T>(ga->mutable_data_ptr<T>(), g[k].const_data_ptr<T>(), R, W, slope,
                           d_dec_mix_b[k - 1].mutable_data_ptr<T>(), part);
    d_dec_mix_w[k - 1] = at::mm(ga->t(), g[k - 1]);
    at::mm_out(*gb, *ga, dec_mix_w[k - 1]);
    std::swap(ga, gb);
  }
  Tensor ga_flat = ga->view({N, F});
  Tensor d_dec_fc_b = at::empty({F}, opts);
  act_backward_colsum<T>(ga->mutable_data_ptr<T>(), g[0].const_data_ptr<T>(), N, F, slope,
                         d_dec_fc_b.mutable_data_ptr<T>(), part);
  Tensor d_dec_fc_w = at::mm(ga_flat.t(), z_in);  // (F, d)
  at::mm_out(dz, ga_flat, dec_fc_w);              // d z_in = d z (the noise term is constant)
  {
    T* pdz = dz.mutable_data_ptr<T>();
    const T k = static_cast<T>(2.0 * latent_l2 / static_cast<double>(N * d));
    for (int64_t i = 0; i < N * d; ++i) pdz[i] += k * pz[i];
  }

  // ---- encoder backward
  Tensor d_enc_fc_w = at::mm(dz.t(), e_flat);  // (d, F)
  Tensor d_enc_fc_b = at::empty({d}, opts);
  {
    const T* pdz = dz.const_data_ptr<T>();
    T* out = d_enc_fc_b.mutable_data_ptr<T>();
    for (int64_t j = 0; j < d; ++j) {
      double acc = 0;
      for (int64_t n = 0; n < N; ++n) acc += pdz[n * d + j];
      out[j] = static_cast<T>(acc);
    }
  }
  Tensor de_flat = ga->view({N, F});
  at::mm_out(de_flat, dz, enc_fc_w);  // d e_K
  for (int64_t k = K; k >= 1; --k) {
    d_enc_mix_b[k - 1] = at::empty({W}, opts);
    act_backward_colsum<T>(ga->mutable_data_ptr<T>(), e[k].const_data_ptr<T>(), R, W, slope,
                           d_enc_mix_b[k - 1].mutable_data_ptr<T>(), part);
    d_enc_mix_w[k - 1] = at::mm(ga->t(), e[k - 1]);
    at::mm_out(*gb, *ga, enc_mix_w[k - 1]);
    std::swap(ga, gb);
  }
  Tensor d_enc_conv_b = at::empty({W}, opts);
  act_backward_colsum<T>(ga->mutable_data_ptr<T>(), e[0].const_data_ptr<T>(), R, W, slope,
                         d_enc_conv_b.mutable_data_ptr<T>(), part);
  Tensor d_enc_conv_w = at::mm(ga->t(), cols);  // (W, Q)

  std::vector<Tensor> grads;
  grads.reserve(p.size());
  grads.push_back(d_enc_conv_w);
  grads.push_back(d_enc_conv_b);
  for (int64_t k = 0; k < K; ++k) {
    grads.push_back(d_enc_mix_w[k]);
    grads.push_back(d_enc_mix_b[k]);
  }
  grads.push_back(d_enc_fc_w);
  grads.push_back(d_enc_fc_b);
  grads.push_back(d_dec_fc_w);
  grads.push_back(d_dec_fc_b);
  for (int64_t k = 0; k < K; ++k) {
    grads.push_back(d_dec_mix_w[k]);
    grads.push_back(d_dec_mix_b[k]);
  }
  grads.push_back(d_dec_conv_w);
  grads.push_back(d_dec_conv_b);

  Tensor rec_t = at::scalar_tensor(rec, opts);
  Tensor zsq_t = at::scalar_tensor(zsq, opts);
  Tensor loss_t = at::scalar_tensor(rec + latent_l2 * zsq, opts);
  return {loss_t, rec_t, zsq_t, grads};
}

void check_param(const Tensor& t, const char* name, std::initializer_list<int64_t> shape, const Tensor& y) {
  TORCH_CHECK(t.sizes() == at::IntArrayRef(shape), "patch_ae_step_cpu: ", name, " has shape ", t.sizes(),
              ", expected ", at::IntArrayRef(shape));
  TORCH_CHECK(t.device().is_cpu(), "patch_ae_step_cpu: ", name, " must be on the CPU");
  TORCH_CHECK(t.scalar_type() == y.scalar_type(), "patch_ae_step_cpu: ", name, " is ", t.scalar_type(),
              " but y is ", y.scalar_type());
}

// params, in the modules' order: encoder conv weight (W, Q) and bias (W), K x (mix weight (W, W), bias (W)),
// fc weight (d, P W), bias (d); decoder fc weight (P W, d), bias (P W), K x (mix weight, bias), transposed
// conv weight (W, Q) and bias (C). Conv weights in (c, ky, kx) column order, i.e. nn.Conv2d's /
// nn.ConvTranspose2d's (W, C, 2S, 2S) flattened. Returns (loss, reconstruction loss, mean z^2, gradients in
// the same order and shapes).
std::tuple<Tensor, Tensor, Tensor, std::vector<Tensor>> patch_ae_step_cpu(
    Tensor y, std::vector<Tensor> params, int64_t channels, int64_t side, int64_t stride, double negative_slope,
    double latent_l2, std::string loss, double latent_noise, std::optional<Tensor> noise) {
  at::NoGradGuard no_grad;
  TORCH_CHECK(y.device().is_cpu(), "patch_ae_step_cpu: y must be on the CPU");
  TORCH_CHECK(y.scalar_type() == at::kFloat || y.scalar_type() == at::kDouble,
              "patch_ae_step_cpu: float32 or float64 only, got ", y.scalar_type());
  TORCH_CHECK(stride >= 2 && stride % 2 == 0, "patch_ae_step_cpu: stride must be even and >= 2, got ", stride);
  TORCH_CHECK(side >= stride && side % stride == 0, "patch_ae_step_cpu: side ", side, " is not a multiple of stride ",
              stride);
  TORCH_CHECK(channels >= 1, "patch_ae_step_cpu: channels must be >= 1, got ", channels);
  TORCH_CHECK(params.size() >= 8 && params.size() % 4 == 0, "patch_ae_step_cpu: expected 8 + 4 depth parameters, got ",
              params.size());
  TORCH_CHECK(loss == "bce" || loss == "mse", "patch_ae_step_cpu: loss must be 'bce' or 'mse', got '", loss, "'");
  TORCH_CHECK(negative_slope >= 0, "patch_ae_step_cpu: negative_slope must be >= 0, got ", negative_slope);
  Shapes s{};
  s.N = y.size(0);
  s.C = channels;
  s.H = side;
  s.S = stride;
  s.L = side / stride;
  s.P = s.L * s.L;
  s.K = static_cast<int64_t>(params.size() - 8) / 4;
  s.W = params[0].size(0);
  s.Q = channels * 4 * stride * stride;
  s.d = params[2 + 2 * s.K].size(0);
  s.R = s.N * s.P;
  s.F = s.P * s.W;
  TORCH_CHECK(y.dim() == 2 && y.size(1) == channels * side * side && s.N > 0, "patch_ae_step_cpu: y must be (N > 0, ",
              channels * side * side, "), got ", y.sizes());
  std::vector<Tensor> p;
  p.reserve(params.size());
  for (const auto& t : params) p.push_back(t.detach().contiguous());
  const int64_t W = s.W, Q = s.Q, F = s.F, d = s.d, K = s.K, o = 4 + 2 * K;
  check_param(p[0], "encoder conv weight", {W, Q}, y);
  check_param(p[1], "encoder conv bias", {W}, y);
  for (int64_t k = 0; k < K; ++k) {
    check_param(p[2 + 2 * k], "encoder mix weight", {W, W}, y);
    check_param(p[3 + 2 * k], "encoder mix bias", {W}, y);
    check_param(p[o + 2 + 2 * k], "decoder mix weight", {W, W}, y);
    check_param(p[o + 3 + 2 * k], "decoder mix bias", {W}, y);
  }
  check_param(p[2 + 2 * K], "encoder fc weight", {d, F}, y);
  check_param(p[3 + 2 * K], "encoder fc bias", {d}, y);
  check_param(p[o], "decoder fc weight", {F, d}, y);
  check_param(p[o + 1], "decoder fc bias", {F}, y);
  check_param(p[o + 2 + 2 * K], "decoder conv weight", {W, Q}, y);
  check_param(p[o + 3 + 2 * K], "decoder conv bias", {channels}, y);
  std::optional<Tensor> eps;
  if (latent_noise > 0) {
    TORCH_CHECK(noise.has_value() && noise->sizes() == at::IntArrayRef({s.N, d}) &&
                    noise->scalar_type() == y.scalar_type() && noise->device().is_cpu(),
                "patch_ae_step_cpu: latent_noise > 0 needs noise of shape (", s.N, ", ", d, ") and y's dtype");
    TORCH_CHECK(s.N >= 2, "patch_ae_step_cpu: latent_noise > 0 needs a batch of at least 2 (std over the batch)");
    eps = noise->detach().contiguous();
  }
  Tensor yc = y.detach().contiguous();
  const bool bce = loss == "bce";
  if (y.scalar_type() == at::kDouble)
    return step_impl<double>(yc, p, s, negative_slope, latent_l2, bce, latent_noise, eps);
  return step_impl<float>(yc, p, s, static_cast<float>(negative_slope), latent_l2, bce, latent_noise, eps);
}

// ------------------------------------------------------------------------------------------------------------
// Inference (backend "cpp" of ops.generate / ops.encode with a PatchDecoder's tail / PatchEncoder's front): the
// same layers forward only, a few images at a time so that every intermediate of a chunk (the head's output, the
// mix layers', the patches, the image) stays in L2 between the passes; the output written once.

// Activation of a dense layer as the ops hand it over: none, LeakyReLU(slope) (ReLU: slope 0), or sigmoid.
enum DenseAct : int64_t { kActNone = 0, kActLeaky = 1, kActSigmoid = 2 };

// sigmoid(v) = 1 / (1 + e^-v) through e = exp(-|v|) <= 1 (no overflow): vectorises for float (exp_nonpositive).
template <typename T>
inline T sigmoid_of(T v) {
  const T e = exp_neg_abs(v), r = T(1) / (T(1) + e);
  return (v >= T(0) ? T(1) : e) * r;
}

// h <- act(h + b) in place over `rows` rows (one chunk: no parallel region of its own).
template <typename T>
void bias_dense_act(T* h, const T* b, int64_t rows, int64_t cols, int64_t act, T slope) {
  if (act == kActSigmoid) {
    for (int64_t r = 0; r < rows; ++r) {
      T* __restrict__ hr = h + r * cols;
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) hr[j] = sigmoid_of(hr[j] + b[j]);
    }
    return;
  }
  bias_act<T>(h, b, rows, cols, act == kActLeaky ? slope : T(1));
}

// The package's uint8 rule: rint(min(max(y * 255, 0), 255)), ties to even, no fused multiply-add into it (the
// clamp sits between the product and the rounding shift 1.5 * 2^(mantissa bits)).
template <typename T>
inline uint8_t to_uint8(T y) {
  constexpr T kShift = std::is_same_v<T, float> ? T(12582912.0f) : T(6755399441055744.0);
  T v = y * T(255);
  v = v > T(0) ? v : T(0);
  v = v < T(255) ? v : T(255);
  return static_cast<uint8_t>((v + kShift) - kShift);
}

// Images of one chunk: logits img (nb, C*H*H) -> sigmoid, into out (the same place when O == T; uint8 by the
// package's rule).
template <typename T, typename O>
void sigmoid_out(T* img, O* out, int64_t count) {
#pragma omp simd
  for (int64_t k = 0; k < count; ++k) {
    const T s = sigmoid_of(img[k]);
    if constexpr (std::is_same_v<O, uint8_t>) out[k] = to_uint8(s);
    else out[k] = static_cast<O>(s);
  }
}

struct InferShapes {
  int64_t N, C, H, S, L, P, W, Q, K, F, nb;
};

int64_t chunk_images(int64_t N, int64_t per_image_bytes, int64_t budget_bytes, int64_t chunk) {
  const int64_t nb = chunk > 0 ? chunk : std::max<int64_t>(1, budget_bytes / std::max<int64_t>(1, per_image_bytes));
  return std::max<int64_t>(1, std::min(nb, N));
}

// z (N, d) -> head (act(z Fd^T + bd), (nb, P W) = (nb P, W)) -> K mix layers -> patches (nb P, Q) -> col2im + bias
// -> sigmoid -> out (N, C H H) of O.
template <typename T, typename O>
void tail_impl(const Tensor& z, const Tensor& head_w, const Tensor& head_b, int64_t head_act, T head_slope,
               const std::vector<Tensor>& mix_w, const std::vector<Tensor>& mix_b, const Tensor& conv_w,
               const Tensor& conv_b, T slope, const InferShapes& s, Tensor& out) {
  const int64_t N = s.N, C = s.C, H = s.H, S = s.S, P = s.P, W = s.W, Q = s.Q, K = s.K, F = s.F, nb = s.nb;
  const int64_t HW = H * H, chunks = (N + nb - 1) / nb;
  const bool direct = std::is_same_v<T, O>;  // the image is written in place in `out`
  const int64_t per_chunk = nb * F * (K > 0 ? 2 : 1) + nb * P * Q + (direct ? 0 : nb * C * HW);
  const auto opts = z.options();
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    Tensor ws = workspace<T>(per_chunk, opts);
    for (int64_t ch = c0; ch < c1; ++ch) {
      const int64_t n0 = ch * nb, m = std::min(nb, N - n0), R = m * P;
      int64_t off = 0;
      auto take = [&](int64_t rows, int64_t cols, int64_t cap) {
        Tensor v = ws.narrow(0, off, rows * cols).view({rows, cols});
        off += cap;
        return v;
      };
      Tensor a = take(m, F, nb * F), b = K > 0 ? take(R, W, nb * F) : Tensor();
      Tensor patches = take(R, Q, nb * P * Q);
      at::mm_out(a, z.narrow(0, n0, m), head_w.t());
      bias_dense_act<T>(a.mutable_data_ptr<T>(), head_b.const_data_ptr<T>(), m, F, head_act, head_slope);
      Tensor h = a.view({R, W}), spare = b;
      for (int64_t k = 0; k < K; ++k) {
        at::mm_out(spare, h, mix_w[k].t());
        bias_act<T>(spare.mutable_data_ptr<T>(), mix_b[k].const_data_ptr<T>(), R, W, slope);
        std::swap(h, spare);
      }
      at::mm_out(patches, h, conv_w);
      O* dst = out.mutable_data_ptr<O>() + n0 * C * HW;
      T* img = direct ? reinterpret_cast<T*>(dst) : ws.mutable_data_ptr<T>() + off;
      const T* bt = conv_b.const_data_ptr<T>();
      for (int64_t n = 0; n < m; ++n)
        for (int64_t c = 0; c < C; ++c) std::fill(img + (n * C + c) * HW, img + (n * C + c + 1) * HW, bt[c]);
      col2im_add<T>(patches.const_data_ptr<T>(), img, m, C, H, S);
      sigmoid_out<T, O>(img, dst, m * C * HW);
    }
  });
}

// y (N, C H H) -> im2col (nb P, Q) -> act(. Wc^T + bc) (nb P, W) -> K mix layers -> (nb, P W) Fe^T + be, act ->
// out (N, d).
template <typename T>
void front_impl(const Tensor& y, const std::vector<Tensor>& mix_w, const std::vector<Tensor>& mix_b,
                const Tensor& conv_w, const Tensor& conv_b, const Tensor& fc_w, const Tensor& fc_b, int64_t fc_act,
                T fc_slope, T slope, const InferShapes& s, Tensor& out) {
  const int64_t N = s.N, C = s.C, H = s.H, S = s.S, P = s.P, W = s.W, Q = s.Q, K = s.K, F = s.F, nb = s.nb;
  const int64_t d = fc_w.size(0), chunks = (N + nb - 1) / nb;
  const int64_t per_chunk = nb * P * Q + nb * F * (K > 0 ? 2 : 1);
  const auto opts = y.options();
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    Tensor ws = workspace<T>(per_chunk, opts);
    for (int64_t ch = c0; ch < c1; ++ch) {
      const int64_t n0 = ch * nb, m = std::min(nb, N - n0), R = m * P;
      Tensor cols = ws.narrow(0, 0, R * Q).view({R, Q});
      Tensor h = ws.narrow(0, nb * P * Q, R * W).view({R, W});
      Tensor spare = K > 0 ? ws.narrow(0, nb * P * Q + nb * F, R * W).view({R, W}) : Tensor();
      im2col<T>(y.const_data_ptr<T>() + n0 * C * H * H, cols.mutable_data_ptr<T>(), m, C, H, S);
      at::mm_out(h, cols, conv_w.t());
      bias_act<T>(h.mutable_data_ptr<T>(), conv_b.const_data_ptr<T>(), R, W, slope);
      for (int64_t k = 0; k < K; ++k) {
        at::mm_out(spare, h, mix_w[k].t());
        bias_act<T>(spare.mutable_data_ptr<T>(), mix_b[k].const_data_ptr<T>(), R, W, slope);
        std::swap(h, spare);
      }
      Tensor dst = out.narrow(0, n0, m);
      at::mm_out(dst, h.view({m, F}), fc_w.t());
      bias_dense_act<T>(dst.mutable_data_ptr<T>(), fc_b.const_data_ptr<T>(), m, d, fc_act, fc_slope);
    }
  });
}

void check_infer(const Tensor& t, const char* fn, const char* name, at::IntArrayRef shape, at::ScalarType dtype) {
  TORCH_CHECK(t.sizes() == shape, fn, ": ", name, " has shape ", t.sizes(), ", expected ", shape);
  TORCH_CHECK(t.device().is_cpu(), fn, ": ", name, " must be on the CPU");
  TORCH_CHECK(t.scalar_type() == dtype, fn, ": ", name, " is ", t.scalar_type(), " but expected ", dtype);
}

InferShapes infer_shapes(const char* fn, int64_t N, int64_t channels, int64_t side, int64_t stride, int64_t width,
                         int64_t depth) {
  TORCH_CHECK(stride >= 2 && stride % 2 == 0, fn, ": stride must be even and >= 2, got ", stride);
  TORCH_CHECK(side >= stride && side % stride == 0, fn, ": side ", side, " is not a multiple of stride ", stride);
  TORCH_CHECK(channels >= 1 && width >= 1, fn, ": channels and width must be >= 1, got ", channels, ", ", width);
  InferShapes s{};
  s.N = N;
  s.C = channels;
  s.H = side;
  s.S = stride;
  s.L = side / stride;
  s.P = s.L * s.L;
  s.W = width;
  s.Q = channels * 4 * stride * stride;
  s.K = depth;
  s.F = s.P * width;
  return s;
}

std::vector<Tensor> contiguous_all(const std::vector<Tensor>& ts) {
  std::vector<Tensor> out;
  out.reserve(ts.size());
  for (const auto& t : ts) out.push_back(t.detach().contiguous());
  return out;
}

// z (N, d) -> images (N, C side side) of out_dtype (T = z's dtype, or uint8): the decoder's dense head (head_w
// (P W, d), head_b, activation head_act / head_slope) and a PatchDecoder's tail (mix layers (W, W), transposed
// convolution conv_w (W, 4 S^2 C) in (c, ky, kx) column order, conv_b (C)), `chunk` images at a time (<= 0: as
// many as fit `budget_bytes`).
Tensor patch_tail_cpu(Tensor z, Tensor head_w, Tensor head_b, int64_t head_act, double head_slope,
                      std::vector<Tensor> mix_w, std::vector<Tensor> mix_b, Tensor conv_w, Tensor conv_b,
                      int64_t channels, int64_t side, int64_t stride, double negative_slope, at::ScalarType out_dtype,
                      int64_t chunk, int64_t budget_bytes) {
  at::NoGradGuard no_grad;
  const char* fn = "patch_tail_cpu";
  TORCH_CHECK(z.device().is_cpu() && z.dim() == 2, fn, ": z must be a 2-D CPU tensor, got ", z.sizes());
  const auto dt = z.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble, fn, ": float32 or float64 only, got ", dt);
  TORCH_CHECK(out_dtype == dt || out_dtype == at::kByte, fn, ": out_dtype must be z's dtype or uint8, got ", out_dtype);
  TORCH_CHECK(mix_w.size() == mix_b.size(), fn, ": as many mix weights as biases");
  TORCH_CHECK(head_act >= kActNone && head_act <= kActSigmoid, fn, ": unknown head activation ", head_act);
  const int64_t W = conv_w.size(0);
  InferShapes s = infer_shapes(fn, z.size(0), channels, side, stride, W, static_cast<int64_t>(mix_w.size()));
  const int64_t d = z.size(1);
  Tensor zc = z.detach().contiguous();
  check_infer(head_w, fn, "head weight", {s.F, d}, dt);
  check_infer(head_b, fn, "head bias", {s.F}, dt);
  check_infer(conv_w, fn, "conv weight", {W, s.Q}, dt);
  check_infer(conv_b, fn, "conv bias", {channels}, dt);
  for (size_t k = 0; k < mix_w.size(); ++k) {
    check_infer(mix_w[k], fn, "mix weight", {W, W}, dt);
    check_infer(mix_b[k], fn, "mix bias", {W}, dt);
  }
  Tensor out = at::empty({s.N, channels * side * side}, z.options().dtype(out_dtype));
  if (s.N == 0) return out;
  const auto mw = contiguous_all(mix_w), mb = contiguous_all(mix_b);
  const Tensor hw = head_w.detach().contiguous(), hb = head_b.detach().contiguous();
  const Tensor cw = conv_w.detach().contiguous(), cb = conv_b.detach().contiguous();
  const int64_t elt = dt == at::kFloat ? 4 : 8;
  s.nb = chunk_images(s.N, elt * (s.F * (s.K > 0 ? 2 : 1) + s.P * s.Q + channels * side * side), budget_bytes, chunk);
  if (dt == at::kFloat) {
    if (out_dtype == at::kByte)
      tail_impl<float, uint8_t>(zc, hw, hb, head_act, float(head_slope), mw, mb, cw, cb, float(negative_slope), s, out);
    else
      tail_impl<float, float>(zc, hw, hb, head_act, float(head_slope), mw, mb, cw, cb, float(negative_slope), s, out);
  } else {
    if (out_dtype == at::kByte)
      tail_impl<double, uint8_t>(zc, hw, hb, head_act, head_slope, mw, mb, cw, cb, negative_slope, s, out);
    else
      tail_impl<double, double>(zc, hw, hb, head_act, head_slope, mw, mb, cw, cb, negative_slope, s, out);
  }
  return out;
}

// y (N, C side side) -> (N, d): a PatchEncoder's front (conv_w (W, 4 S^2 C) in (c, ky, kx) column order, conv_b
// (W), mix layers) and the encoder's first dense layer (fc_w (d, P W), fc_b, activation fc_act / fc_slope).
Tensor patch_front_cpu(Tensor y, std::vector<Tensor> mix_w, std::vector<Tensor> mix_b, Tensor conv_w, Tensor conv_b,
                       Tensor fc_w, Tensor fc_b, int64_t fc_act, double fc_slope, int64_t channels, int64_t side,
                       int64_t stride, double negative_slope, int64_t chunk, int64_t budget_bytes) {
  at::NoGradGuard no_grad;
  const char* fn = "patch_front_cpu";
  TORCH_CHECK(y.device().is_cpu() && y.dim() == 2, fn, ": y must be a 2-D CPU tensor, got ", y.sizes());
  const auto dt = y.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble, fn, ": float32 or float64 only, got ", dt);
  TORCH_CHECK(mix_w.size() == mix_b.size(), fn, ": as many mix weights as biases");
  TORCH_CHECK(fc_act >= kActNone && fc_act <= kActSigmoid, fn, ": unknown dense activation ", fc_act);
  const int64_t W = conv_w.size(0);
  InferShapes s = infer_shapes(fn, y.size(0), channels, side, stride, W, static_cast<int64_t>(mix_w.size()));
  TORCH_CHECK(y.size(1) == channels * side * side, fn, ": y must be (N, ", channels * side * side, "), got ",
              y.sizes());
  const int64_t d = fc_w.size(0);
  check_infer(conv_w, fn, "conv weight", {W, s.Q}, dt);
  check_infer(conv_b, fn, "conv bias", {W}, dt);
  check_infer(fc_w, fn, "dense weight", {d, s.F}, dt);
  check_infer(fc_b, fn, "dense bias", {d}, dt);
  for (size_t k = 0; k < mix_w.size(); ++k) {
    check_infer(mix_w[k], fn, "mix weight", {W, W}, dt);
    check_infer(mix_b[k], fn, "mix bias", {W}, dt);
  }
  Tensor out = at::empty({s.N, d}, y.options());
  if (s.N == 0) return out;
  const Tensor yc = y.detach().contiguous();
  const auto mw = contiguous_all(mix_w), mb = contiguous_all(mix_b);
  const Tensor cw = conv_w.detach().contiguous(), cb = conv_b.detach().contiguous();
  const Tensor fw = fc_w.detach().contiguous(), fb = fc_b.detach().contiguous();
  const int64_t elt = dt == at::kFloat ? 4 : 8;
  s.nb = chunk_images(s.N, elt * (s.P * s.Q + s.F * (s.K > 0 ? 2 : 1)), budget_bytes, chunk);
  if (dt == at::kFloat)
    front_impl<float>(yc, mw, mb, cw, cb, fw, fb, fc_act, float(fc_slope), float(negative_slope), s, out);
  else
    front_impl<double>(yc, mw, mb, cw, cb, fw, fb, fc_act, fc_slope, negative_slope, s, out);
  return out;
}

static lsdm::Registration reg([](pybind11::module_& m) {
  m.def("patch_ae_step_cpu", &patch_ae_step_cpu,
        "One stage-1 step of the patch autoencoder: (loss, reconstruction, mean z^2, gradients in module order).",
        pybind11::arg("y"), pybind11::arg("params"), pybind11::arg("channels"), pybind11::arg("side"),
        pybind11::arg("stride"), pybind11::arg("negative_slope"), pybind11::arg("latent_l2"), pybind11::arg("loss"),
        pybind11::arg("latent_noise"), pybind11::arg("noise"));
  m.def("patch_tail_cpu", &patch_tail_cpu,
        "A decoder's dense head and a PatchDecoder's tail, forward: latents (N, d) -> images (N, C*side*side).",
        pybind11::arg("z"), pybind11::arg("head_w"), pybind11::arg("head_b"), pybind11::arg("head_act"),
        pybind11::arg("head_slope"), pybind11::arg("mix_w"), pybind11::arg("mix_b"), pybind11::arg("conv_w"),
        pybind11::arg("conv_b"), pybind11::arg("channels"), pybind11::arg("side"), pybind11::arg("stride"),
        pybind11::arg("negative_slope"), pybind11::arg("out_dtype"), pybind11::arg("chunk"),
        pybind11::arg("budget_bytes"));
  m.def("patch_front_cpu", &patch_front_cpu,
        "A PatchEncoder's front and the encoder's first dense layer, forward: images (N, C*side*side) -> (N, d).",
        pybind11::arg("y"), pybind11::arg("mix_w"), pybind11::arg("mix_b"), pybind11::arg("conv_w"),
        pybind11::arg("conv_b"), pybind11::arg("fc_w"), pybind11::arg("fc_b"), pybind11::arg("fc_act"),
        pybind11::arg("fc_slope"), pybind11::arg("channels"), pybind11::arg("side"), pybind11::arg("stride"),
        pybind11::arg("negative_slope"), pybind11::arg("chunk"), pybind11::arg("budget_bytes"));
});

}  // namespace
