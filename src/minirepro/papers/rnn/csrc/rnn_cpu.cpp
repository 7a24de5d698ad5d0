// FlashRNN CPU kernel: fused head-wise recurrence, forward and backward.
//
// Heads (and tiles of the batch) are independent along the whole sequence, so each thread
// owns a (head, batch tile) and runs the full time loop on it: no synchronisation per step.
// Per step, the recurrent product is a small GEMM with the batch tile on M, so the head's
// recurrent block R[n] (D x G*D) is read once per step and stays in L1/L2, the CPU analogue
// of FlashRNN keeping R in registers / shared memory. The gate math runs on the GEMM's
// output while it is still in L1.
//
// Layouts (as the Python wrapper passes them, all contiguous):
//   Wx [B, T, Gw, N, D]; Rt [N, D, Gr*D] (forward); Rf [N, Gr*D, D] (backward);
//   bias [Gt, N, D]; s0 [S, B, N, D]; out [S, B, T, N, D]; gates [B, T, Gs, N, D].
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <vector>

#include <sys/mman.h>

namespace {

// The cell ids and gate/state counts come from functions.FUNCTIONS (the one table the C++,
// Triton and reference paths follow): ids as -D defines at build time, counts per call.
#if !defined(RNN_FN_LSTM) || !defined(RNN_FN_SLSTM) || !defined(RNN_FN_GRU) || \
    !defined(RNN_FN_ELMAN)
#error "build through minirepro.papers.rnn.cpu.load_extension (it defines the cell ids)"
#endif
enum Fn { kLSTM = RNN_FN_LSTM, kSLSTM = RNN_FN_SLSTM, kGRU = RNN_FN_GRU, kELMAN = RNN_FN_ELMAN };

// Vector width of the micro-kernel: 512 bits where the build machine has AVX-512.
// Rows of the register tile: MR x 2 vector accumulators plus 2 vectors of B and a broadcast
// must fit the register file (32 zmm with AVX-512, 16 ymm with AVX2; 8 x 2 on AVX2 spills).
#ifdef __AVX512F__
constexpr int kVecBytes = 64;
constexpr int kMR = 8;
#else
constexpr int kVecBytes = 32;
constexpr int kMR = 4;
#endif

template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(kVecBytes), aligned(sizeof(T)), may_alias));
  static constexpr int L = kVecBytes / sizeof(T);
};

// C[MR, NV*L] (+)= A[MR, K] @ B[K, NV*L]: MR x NV vector accumulators stay in registers.
// A has arbitrary strides (its entries are broadcast); B and C rows are contiguous.
template <typename T, int MR, int NV>
inline void micro(int K, const T* A, int64_t a_rs, int64_t a_cs, const T* B, int64_t b_rs,
                  T* C, int64_t c_rs, bool accumulate) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::L;
  V c[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) c[i][j] = accumulate ? *(const V*)(C + i * c_rs + j * L) : V{};
  for (int k = 0; k < K; ++k) {
    V bv[NV];
    for (int j = 0; j < NV; ++j) bv[j] = *(const V*)(B + k * b_rs + j * L);
    for (int i = 0; i < MR; ++i) {
      const T a = A[i * a_rs + k * a_cs];
      for (int j = 0; j < NV; ++j) c[i][j] += a * bv[j];
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) *(V*)(C + i * c_rs + j * L) = c[i][j];
}

template <typename T, int NV>
inline void gemm_cols(int M, int K, const T* A, int64_t a_rs, int64_t a_cs, const T* B,
                      int64_t b_rs, T* C, int64_t c_rs, bool accumulate) {
  int i = 0;
  for (; i + kMR <= M; i += kMR)
    micro<T, kMR, NV>(K, A + i * a_rs, a_rs, a_cs, B, b_rs, C + i * c_rs, c_rs, accumulate);
  if constexpr (kMR > 4)
    for (; i + 4 <= M; i += 4)
      micro<T, 4, NV>(K, A + i * a_rs, a_rs, a_cs, B, b_rs, C + i * c_rs, c_rs, accumulate);
  for (; i + 2 <= M; i += 2)
    micro<T, 2, NV>(K, A + i * a_rs, a_rs, a_cs, B, b_rs, C + i * c_rs, c_rs, accumulate);
  for (; i < M; ++i)
    micro<T, 1, NV>(K, A + i * a_rs, a_rs, a_cs, B, b_rs, C + i * c_rs, c_rs, accumulate);
}

// C[M, N] (+)= A[M, K] @ B[K, N].
template <typename T>
void gemm(int M, int N, int K, const T* A, int64_t a_rs, int64_t a_cs, const T* B,
          int64_t b_rs, T* C, int64_t c_rs, bool accumulate) {
  constexpr int L = Vec<T>::L;
  int j = 0;
  for (; j + 2 * L <= N; j += 2 * L)
    gemm_cols<T, 2>(M, K, A, a_rs, a_cs, B + j, b_rs, C + j, c_rs, accumulate);
  for (; j + L <= N; j += L)
    gemm_cols<T, 1>(M, K, A, a_rs, a_cs, B + j, b_rs, C + j, c_rs, accumulate);
  for (; j < N; ++j)
    for (int i = 0; i < M; ++i) {
      T s = accumulate ? C[i * c_rs + j] : T(0);
      for (int k = 0; k < K; ++k) s += A[i * a_rs + k * a_cs] * B[k * b_rs + j];
      C[i * c_rs + j] = s;
    }
}

// Branch-free exp/tanh/sigmoid/log-sigmoid that the compiler can vectorise (float), and the
// library functions for double (used by gradient checks).
#define RNN_INLINE inline __attribute__((always_inline))

RNN_INLINE float fast_exp(float x) {
  x = std::min(std::max(x, -87.3f), 88.3f);
  // round to nearest with the 1.5 * 2^23 trick (exact for |t| < 2^22)
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}
inline double fast_exp(double x) { return std::exp(x); }

// log(1 + u) for u in [0, 1]: 2 atanh(s), s = u / (2 + u) <= 1/3.
RNN_INLINE float log1p_unit(float u) {
  const float s = u / (2.0f + u), s2 = s * s;
  float p = 1.0f / 17;
  p = p * s2 + 1.0f / 15;
  p = p * s2 + 1.0f / 13;
  p = p * s2 + 1.0f / 11;
  p = p * s2 + 1.0f / 9;
  p = p * s2 + 1.0f / 7;
  p = p * s2 + 1.0f / 5;
  p = p * s2 + 1.0f / 3;
  p = p * s2 + 1.0f;
  return 2.0f * s * p;
}
inline double log1p_unit(double u) { return std::log1p(u); }

template <typename T>
RNN_INLINE T sigmoid(T x) { return T(1) / (T(1) + fast_exp(-x)); }

template <typename T>
RNN_INLINE T tanh_(T x) {
  const T e = fast_exp(T(-2) * std::abs(x));
  const T t = (T(1) - e) / (T(1) + e);
  return std::copysign(t, x);
}
inline double tanh_(double x) { return std::tanh(x); }

template <typename T>
RNN_INLINE T log_sigmoid(T x) { return std::min(x, T(0)) - log1p_unit(fast_exp(-std::abs(x))); }

template <typename T>
RNN_INLINE T clip(T x, T v) { return std::min(std::max(x, -v), v); }

// Rows of consecutive steps are a page apart (e.g. Wx[b, t] and Wx[b, t+1]), which the hardware
// prefetcher does not follow: fetch the next step's rows while this step computes.
template <typename T>
RNN_INLINE void prefetch(const T* p, int64_t n, bool write) {
  const char* c = reinterpret_cast<const char*>(p);
  for (int64_t i = 0; i < n * int64_t(sizeof(T)); i += 64) {
    if (write) __builtin_prefetch(c + i, 1, 3);
    else __builtin_prefetch(c + i, 0, 3);
  }
}

// Large outputs (out, gates, dWx: 30-70 MB each at the benchmark size) are fresh memory on
// every call: glibc maps blocks this large with mmap and unmaps them when freed, so each call
// pays a page fault and the kernel's zeroing of every page (a quarter of the backward's
// time). A small pool keeps such buffers once they are free again and hands them out for the
// next request of the same size. A buffer is free when the pool holds the only reference to
// its storage (no tensor or view anywhere else uses it), so reuse can never alias live data.
// New buffers ask for transparent huge pages (one fault per 2 MiB rather than per 4 KiB).
constexpr int64_t kPoolMinBytes = int64_t(1) << 22;   // smaller ones: the normal allocator

struct Pool {
  std::mutex mu;
  std::vector<at::Tensor> bufs;                // 1-d buffers
  int64_t limit = int64_t(1) << 30;            // bytes the pool may hold (set_pool_limit)
};
Pool& pool() {
  static Pool p;
  return p;
}
inline bool is_free(const at::Tensor& t) { return t.storage().use_count() == 1; }

// Drops free buffers, largest first, until the pool holds at most `target` bytes (or only
// buffers in use remain). Returns the bytes dropped. Call with the mutex held.
int64_t shrink_locked(Pool& p, int64_t target) {
  int64_t held = 0, dropped = 0;
  for (auto& t : p.bufs) held += int64_t(t.nbytes());
  while (held > target) {
    auto it = std::max_element(p.bufs.begin(), p.bufs.end(),
                               [](const at::Tensor& a, const at::Tensor& b) {
                                 const bool fa = is_free(a), fb = is_free(b);
                                 return fa != fb ? fb : a.nbytes() < b.nbytes();
                               });
    if (it == p.bufs.end() || !is_free(*it)) break;
    held -= int64_t(it->nbytes());
    dropped += int64_t(it->nbytes());
    p.bufs.erase(it);
  }
  return dropped;
}

at::Tensor empty_huge(at::IntArrayRef sizes, const at::TensorOptions& options) {
  int64_t numel = 1;
  for (auto s : sizes) numel *= s;
  const int64_t nbytes = numel * int64_t(c10::elementSize(c10::typeMetaToScalarType(options.dtype())));
  if (nbytes < kPoolMinBytes) return at::empty(sizes, options);
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mu);
  for (auto& t : p.bufs)
    if (is_free(t) && t.nbytes() == size_t(nbytes) && t.dtype() == options.dtype())
      return t.view(sizes);
  // make room for the new buffer under the limit by dropping free ones
  shrink_locked(p, std::max<int64_t>(0, p.limit - nbytes));
  int64_t held = 0;
  for (auto& t : p.bufs) held += int64_t(t.nbytes());
  auto t = at::empty({numel}, options);
  const uintptr_t start = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t end = start + nbytes;
  const uintptr_t huge = uintptr_t(1) << 21;
  const uintptr_t a = (start + huge - 1) & ~(huge - 1), e = end & ~(huge - 1);
#ifdef MADV_HUGEPAGE
  if (e > a) madvise(reinterpret_cast<void*>(a), e - a, MADV_HUGEPAGE);
#endif
  if (held + nbytes <= p.limit) p.bufs.push_back(t);
  return t.view(sizes);
}

struct Dims {
  int64_t B, T, N, D, S, Gr, Gw, Gt, Gs, tile;
};

// The work items go to torch's threads (at::parallel_for, with -fopenmp) only when the call
// is large enough to repay a parallel region: a fork/join costs ~10 us on a quiet machine but
// milliseconds when the cores are oversubscribed, which dwarfs a toy-sized call.
constexpr int64_t kParallelMinFmas = int64_t(1) << 26;

int64_t grain(const Dims& d, int64_t items) {
  const int64_t fmas = d.B * d.T * d.N * d.D * d.D * d.Gr;  // the recurrent matmuls
  return fmas >= kParallelMinFmas ? 1 : items;  // grain >= items: one thread runs them all
}

// spec = (kernel id, states, recurrent gates, input gates, bias gates): CellSpec.kernel_args.
Dims make_dims(at::IntArrayRef spec, int64_t B, int64_t T, int64_t N, int64_t D, int64_t tile) {
  TORCH_CHECK(spec.size() == 5, "spec must be (id, S, Gr, Gw, Gt)");
  TORCH_CHECK(spec[4] <= 4 && spec[2] <= spec[4] && spec[3] <= spec[4] && spec[1] <= 4,
              "at most 4 gates and 4 states");
  Dims d;
  d.B = B; d.T = T; d.N = N; d.D = D;
  d.S = spec[1]; d.Gr = spec[2]; d.Gw = spec[3]; d.Gt = spec[4]; d.Gs = spec[4];
  d.tile = std::max<int64_t>(1, std::min(tile, d.B));
  return d;
}

// ------------------------------------------------------------------------ pointwise rows
// One batch row of one head: D units. `rw` holds the Gt raw gates (Wx + R h + b) contiguously.
// All pointers are distinct buffers (restrict), so the loops vectorise.

template <typename T>
void fw_row(int fn, int64_t D, const T* __restrict rw, const T* __restrict h,
            const T* __restrict c, const T* __restrict nn, const T* __restrict m,
            T* __restrict y, T* __restrict c_out, T* __restrict n_out, T* __restrict m_out,
            T* __restrict g0, T* __restrict g1, T* __restrict g2, T* __restrict g3, bool first,
            bool clip_fw, T cv) {
  const T* __restrict r0 = rw;
  const T* __restrict r1 = rw + D;
  const T* __restrict r2 = rw + 2 * D;
  const T* __restrict r3 = rw + 3 * D;
  // Selects on a bool do not vectorise: an infinite clip value and a -inf offset do the same.
  const T lim = clip_fw ? cv : std::numeric_limits<T>::infinity();
  const T m_off = first ? -std::numeric_limits<T>::infinity() : T(0);
  if (fn == kLSTM) {
    for (int64_t k = 0; k < D; ++k) {
      const T ig = sigmoid(r0[k]), fg = sigmoid(r1[k]), zg = tanh_(r2[k]), og = sigmoid(r3[k]);
      const T cn = fg * c[k] + ig * zg;
      const T yv = og * tanh_(cn);
      y[k] = clip(yv, lim);
      c_out[k] = cn;
      g0[k] = ig; g1[k] = fg; g2[k] = zg; g3[k] = og;
    }
  } else if (fn == kSLSTM) {
    for (int64_t k = 0; k < D; ++k) {
      const T ir = r0[k], fr = r1[k], zr = r2[k], orw = r3[k];
      const T lf = log_sigmoid(fr) + m[k];
      const T mn = std::max(ir, lf + m_off);
      const T ig = fast_exp(ir - mn), fg = fast_exp(lf - mn);
      const T cn = fg * c[k] + ig * tanh_(zr);
      const T nw = std::max(fg * nn[k] + ig, T(1));
      const T yv = sigmoid(orw) * cn / nw;
      y[k] = clip(yv, lim);
      c_out[k] = cn; n_out[k] = nw; m_out[k] = mn;
      g0[k] = ir; g1[k] = fr; g2[k] = zr; g3[k] = orw;
    }
  } else if (fn == kGRU) {
    for (int64_t k = 0; k < D; ++k) {
      const T gg = r0[k], rg = sigmoid(r1[k]), zg = sigmoid(r2[k]);
      const T ng = tanh_(r3[k] + rg * gg);
      const T yv = zg * h[k] + (T(1) - zg) * ng;
      y[k] = clip(yv, lim);
      g0[k] = gg; g1[k] = rg; g2[k] = zg; g3[k] = ng;
    }
  } else {
    for (int64_t k = 0; k < D; ++k) {
      const T yv = tanh_(r0[k]);
      y[k] = clip(yv, lim);
      g0[k] = r0[k];
    }
  }
}

// Gradients of one row: from the gradients of the new states (dy, dc, dn, dm) to those of the
// raw gates (dg, Gt x D contiguous) and of the previous states along the direct paths.
template <typename T>
void bw_row(int fn, int64_t D, const T* __restrict g0, const T* __restrict g1,
            const T* __restrict g2, const T* __restrict g3, const T* __restrict h,
            const T* __restrict c, const T* __restrict nn, const T* __restrict m,
            const T* __restrict cn_, const T* __restrict nw_, const T* __restrict mn_,
            const T* __restrict dy_, const T* __restrict dc_, const T* __restrict dn_,
            const T* __restrict dm_, T* __restrict dhp, T* __restrict dcp, T* __restrict dnp,
            T* __restrict dmp, T* __restrict dg, bool first) {
  T* __restrict d0 = dg;
  T* __restrict d1 = dg + D;
  T* __restrict d2 = dg + 2 * D;
  T* __restrict d3 = dg + 3 * D;
  const T first_t = first ? T(1) : T(0);
  if (fn == kLSTM) {
    for (int64_t k = 0; k < D; ++k) {
      const T ig = g0[k], fg = g1[k], zg = g2[k], og = g3[k];
      const T tc = tanh_(cn_[k]);
      const T dy = dy_[k];
      const T dc = dc_[k] + dy * og * (T(1) - tc * tc);
      d0[k] = dc * zg * ig * (T(1) - ig);
      d1[k] = dc * c[k] * fg * (T(1) - fg);
      d2[k] = dc * ig * (T(1) - zg * zg);
      d3[k] = dy * tc * og * (T(1) - og);
      dcp[k] = dc * fg;
      dhp[k] = T(0);
    }
  } else if (fn == kSLSTM) {
    for (int64_t k = 0; k < D; ++k) {
      const T ir = g0[k], fr = g1[k], zr = g2[k], orw = g3[k];
      const T lf = log_sigmoid(fr) + m[k];
      // torch.maximum splits the gradient of a tie evenly; torch.where(first) picks i.
      const T wi = first_t + (T(1) - first_t) * (ir > lf ? T(1) : (ir < lf ? T(0) : T(0.5)));
      const T wl = T(1) - wi;
      const T mn = mn_[k], cn = cn_[k], nw = nw_[k];
      const T ig = fast_exp(ir - mn), fg = fast_exp(lf - mn);
      const T zt = tanh_(zr), og = sigmoid(orw);
      const T nsum = fg * nn[k] + ig;
      const T dy = dy_[k];
      const T dc = dc_[k] + dy * og / nw;
      const T dnw = dn_[k] - dy * og * cn / (nw * nw);
      const T dns = dnw * (nsum > T(1) ? T(1) : (nsum == T(1) ? T(0.5) : T(0)));
      const T dfg = dc * c[k] + dns * nn[k];
      const T dig = dc * zt + dns;
      const T dm = dm_[k] - dig * ig - dfg * fg;
      const T dlf = dfg * fg + dm * wl;
      d0[k] = dig * ig + dm * wi;
      d1[k] = dlf * sigmoid(-fr);
      d2[k] = dc * ig * (T(1) - zt * zt);
      d3[k] = dy * cn / nw * og * (T(1) - og);
      dcp[k] = dc * fg;
      dnp[k] = dns * fg;
      dmp[k] = dlf;
      dhp[k] = T(0);
    }
  } else if (fn == kGRU) {
    for (int64_t k = 0; k < D; ++k) {
      const T gg = g0[k], rg = g1[k], zg = g2[k], ng = g3[k];
      const T dy = dy_[k];
      const T dpre = dy * (T(1) - zg) * (T(1) - ng * ng);
      d0[k] = dpre * rg;
      d1[k] = dpre * gg * rg * (T(1) - rg);
      d2[k] = dy * (h[k] - ng) * zg * (T(1) - zg);
      d3[k] = dpre;
      dhp[k] = dy * zg;
    }
  } else {
    for (int64_t k = 0; k < D; ++k) {
      const T yv = tanh_(g0[k]);
      d0[k] = dy_[k] * (T(1) - yv * yv);
      dhp[k] = T(0);
    }
  }
}

// ------------------------------------------------------------------------------ forward
// A work item is a tile of the batch [b0, b0 + bt) and a group of heads [n0, n0 + hg), run
// over the whole sequence. Its heads advance in lockstep, so each step touches a row's memory
// page (Wx[b, t], out[s, b, t], ...) once for all heads of the group.

template <typename T>
void forward_item(int fn, const Dims& d, int64_t n0, int64_t hg, int64_t b0, int64_t bt,
                  const T* Wx, const T* Rt, const T* bias, const T* s0, T* out, T* gates,
                  bool first_slstm, bool clip_fw, T clipval) {
  const int64_t D = d.D, N = d.N, Tn = d.T, GrD = d.Gr * D, GtD = d.Gt * D;
  const int64_t o_s = d.B * Tn * N * D, o_b = Tn * N * D, o_t = N * D;  // out strides
  const int64_t s_s = d.B * N * D, s_b = N * D;                           // s0 strides
  const int64_t w_b = Tn * d.Gw * N * D, w_t = d.Gw * N * D, w_g = N * D;  // Wx strides
  const int64_t g_b = Tn * d.Gs * N * D, g_t = d.Gs * N * D, g_g = N * D;  // gates strides
  const int64_t woff = d.Gt - d.Gw;  // bias gate of Wx gate 0 (1 for gru: [r, z, n])
  std::vector<T> raw(bt * GtD), scratch(4 * D), zeros(D, T(0));
  for (int64_t t = 0; t < Tn; ++t) {
    if (t + 1 < Tn)
      for (int64_t r = 0; r < bt; ++r) {
        const int64_t b = b0 + r;
        for (int64_t j = 0; j < d.Gw; ++j)
          prefetch(Wx + b * w_b + (t + 1) * w_t + j * w_g + n0 * D, hg * D, false);
        for (int64_t s = 0; s < d.S; ++s)
          prefetch(out + s * o_s + b * o_b + (t + 1) * o_t + n0 * D, hg * D, true);
        if (gates)
          for (int64_t j = 0; j < d.Gs; ++j)
            prefetch(gates + b * g_b + (t + 1) * g_t + j * g_g + n0 * D, hg * D, true);
      }
    for (int64_t n = n0; n < n0 + hg; ++n) {
      // prev(s, r): state s of batch row b0 + r, head n, before step t
      auto prev = [&](int64_t s, int64_t r) -> const T* {
        if (s >= d.S) return zeros.data();
        return t == 0 ? s0 + s * s_s + (b0 + r) * s_b + n * D
                      : out + s * o_s + (b0 + r) * o_b + (t - 1) * o_t + n * D;
      };
      const int64_t h_rs = t == 0 ? s_b : o_b;
      gemm<T>(bt, GrD, D, prev(0, 0), h_rs, 1, Rt + n * D * GrD, GrD, raw.data(), GtD, false);
      for (int64_t r = 0; r < bt; ++r) {
        const int64_t b = b0 + r;
        T* __restrict rw = raw.data() + r * GtD;
        const T* wx = Wx + b * w_b + t * w_t + n * D;
        for (int64_t j = 0; j < d.Gt; ++j) {
          T* __restrict dst = rw + j * D;
          const T* __restrict bs = bias + j * N * D + n * D;
          if (j < d.Gr && j >= woff) {
            const T* __restrict w = wx + (j - woff) * w_g;
            for (int64_t k = 0; k < D; ++k) dst[k] += w[k] + bs[k];
          } else if (j < d.Gr) {
            for (int64_t k = 0; k < D; ++k) dst[k] += bs[k];
          } else {
            const T* __restrict w = wx + (j - woff) * w_g;
            for (int64_t k = 0; k < D; ++k) dst[k] = w[k] + bs[k];
          }
        }
        T* o = out + b * o_b + t * o_t + n * D;
        T* g = gates ? gates + b * g_b + t * g_t + n * D : scratch.data();
        const int64_t gs = gates ? g_g : D;
        T* so[4];
        for (int64_t s = 0; s < 4; ++s) so[s] = s < d.S ? o + s * o_s : scratch.data();
        fw_row<T>(fn, D, rw, prev(0, r), prev(1, r), prev(2, r), prev(3, r), so[0], so[1],
                  so[2], so[3], g, g + gs, g + 2 * gs, g + 3 * gs, first_slstm && t == 0,
                  clip_fw, clipval);
      }
    }
  }
}

// ----------------------------------------------------------------------------- backward

template <typename T>
void backward_item(int fn, const Dims& d, int64_t n0, int64_t hg, int64_t b0, int64_t bt,
                   int64_t tile_idx, const T* Rf, const T* s0, const T* out, const T* gates,
                   const T* dout, const T* dlast, T* dWx, T* dR_part, T* db_part, T* ds0,
                   bool first_slstm, bool clip_bw, T gclipval) {
  const int64_t D = d.D, N = d.N, Tn = d.T, S = d.S, GrD = d.Gr * D, GtD = d.Gt * D;
  const int64_t o_s = d.B * Tn * N * D, o_b = Tn * N * D, o_t = N * D;
  const int64_t s_s = d.B * N * D, s_b = N * D;
  const int64_t w_b = Tn * d.Gw * N * D, w_t = d.Gw * N * D, w_g = N * D;
  const int64_t g_b = Tn * d.Gs * N * D, g_t = d.Gs * N * D, g_g = N * D;
  const int64_t woff = d.Gt - d.Gw;
  // ds[((i * 4 + s) * bt + r) * D + k]: gradient of state s of head n0 + i, batch row b0 + r,
  // after the current step; 4 state slots whatever S, unused ones stay zero.
  const int64_t per_head = 4 * bt * D;
  std::vector<T> ds(hg * per_head, T(0)), dsp(hg * per_head, T(0)), dg(bt * GtD), rec(bt * D);
  std::vector<T> zeros(D, T(0));
  for (int64_t i = 0; i < hg; ++i)
    for (int64_t s = 0; s < S; ++s)
      for (int64_t r = 0; r < bt; ++r)
        for (int64_t k = 0; k < D; ++k)
          ds[i * per_head + (s * bt + r) * D + k] =
              dlast ? dlast[s * s_s + (b0 + r) * s_b + (n0 + i) * D + k] : T(0);
  T* dbn = db_part + tile_idx * d.Gt * N * D;
  for (int64_t t = Tn - 1; t >= 0; --t) {
    if (t > 0)
      for (int64_t r = 0; r < bt; ++r) {
        const int64_t b = b0 + r, hd = hg * D, nd = n0 * D;
        for (int64_t j = 0; j < d.Gs; ++j)
          prefetch(gates + b * g_b + (t - 1) * g_t + j * g_g + nd, hd, false);
        for (int64_t j = 0; j < d.Gw; ++j)
          prefetch(dWx + b * w_b + (t - 1) * w_t + j * w_g + nd, hd, true);
        for (int64_t s = 0; s < S; ++s) {
          prefetch(out + s * o_s + b * o_b + (t - 1) * o_t + nd, hd, false);
          if (t > 1) prefetch(out + s * o_s + b * o_b + (t - 2) * o_t + nd, hd, false);
          if (dout) prefetch(dout + s * o_s + b * o_b + (t - 1) * o_t + nd, hd, false);
        }
      }
    for (int64_t i = 0; i < hg; ++i) {
      const int64_t n = n0 + i;
      auto prev = [&](int64_t s, int64_t r) -> const T* {
        if (s >= S) return zeros.data();
        return t == 0 ? s0 + s * s_s + (b0 + r) * s_b + n * D
                      : out + s * o_s + (b0 + r) * o_b + (t - 1) * o_t + n * D;
      };
      T* dsi = ds.data() + i * per_head;
      T* dspi = dsp.data() + i * per_head;
      if (dout)
        for (int64_t s = 0; s < S; ++s)
          for (int64_t r = 0; r < bt; ++r) {
            const T* __restrict src = dout + s * o_s + (b0 + r) * o_b + t * o_t + n * D;
            T* __restrict dst = dsi + (s * bt + r) * D;
            for (int64_t k = 0; k < D; ++k) dst[k] += src[k];
          }
      for (int64_t r = 0; r < bt; ++r) {
        const int64_t b = b0 + r;
        const T* o = out + b * o_b + t * o_t + n * D;  // new states
        const T* g = gates + b * g_b + t * g_t + n * D;
        T* dgr = dg.data() + r * GtD;
        auto DS = [&](int64_t s) { return dsi + (s * bt + r) * D; };
        auto DSP = [&](int64_t s) { return dspi + (s * bt + r) * D; };
        const T* on[4];
        for (int64_t s = 0; s < 4; ++s) on[s] = s < S ? o + s * o_s : zeros.data();
        bw_row<T>(fn, D, g, g + g_g, g + 2 * g_g, g + 3 * g_g, prev(0, r), prev(1, r),
                  prev(2, r), prev(3, r), on[1], on[2], on[3], DS(0), DS(1), DS(2), DS(3),
                  DSP(0), DSP(1), DSP(2), DSP(3), dgr, first_slstm && t == 0);
        // scatter to dWx, accumulate db
        T* dw = dWx + b * w_b + t * w_t + n * D;
        for (int64_t j = 0; j < d.Gt; ++j) {
          const T* __restrict src = dgr + j * D;
          T* __restrict dbj = dbn + j * N * D + n * D;
          for (int64_t k = 0; k < D; ++k) dbj[k] += src[k];
          if (j >= woff) {
            T* __restrict dst = dw + (j - woff) * w_g;
            for (int64_t k = 0; k < D; ++k) dst[k] = src[k];
          }
        }
      }
      const int64_t h_rs = t == 0 ? s_b : o_b;
      gemm<T>(GrD, D, bt, dg.data(), 1, GtD, prev(0, 0), h_rs,
              dR_part + (tile_idx * N + n) * GrD * D, D, true);
      gemm<T>(bt, D, GrD, dg.data(), GtD, 1, Rf + n * GrD * D, D, rec.data(), D, false);
      // dh_{t-1} = direct path (gru's z dy) + R^T dgates. flashrnn's CUDA kernels clip this
      // sum where the next step picks it up, so never the gradient of the initial state.
      const bool clip_now = clip_bw && t > 0;
      for (int64_t r = 0; r < bt; ++r)
        for (int64_t k = 0; k < D; ++k) {
          const T v = dspi[r * D + k] + rec[r * D + k];
          dspi[r * D + k] = clip_now ? clip(v, gclipval) : v;
        }
    }
    std::swap(ds, dsp);
  }
  for (int64_t i = 0; i < hg; ++i)
    for (int64_t s = 0; s < S; ++s)
      for (int64_t r = 0; r < bt; ++r)
        for (int64_t k = 0; k < D; ++k)
          ds0[s * s_s + (b0 + r) * s_b + (n0 + i) * D + k] =
              ds[i * per_head + (s * bt + r) * D + k];
}

}  // namespace

// Returns (out [S, B, T, N, D], gates [B, T, Gs, N, D] or empty).
std::vector<at::Tensor> rnn_forward(std::vector<int64_t> spec, at::Tensor Wx, at::Tensor Rt,
                                    at::Tensor bias, at::Tensor s0, bool store_gates,
                                    bool first_slstm, double fw_clip, int64_t tile,
                                    int64_t head_group) {
  const int fn = int(spec[0]);
  const Dims d = make_dims(spec, Wx.size(0), Wx.size(1), Wx.size(3), Wx.size(4), tile);
  TORCH_CHECK(Wx.size(2) == d.Gw && Rt.size(2) == d.Gr * d.D && bias.size(0) == d.Gt &&
                  s0.size(0) == d.S,
              "tensor shapes do not match the cell spec");
  auto out = empty_huge({d.S, d.B, d.T, d.N, d.D}, Wx.options());
  auto gates = store_gates ? empty_huge({d.B, d.T, d.Gs, d.N, d.D}, Wx.options()) : at::Tensor();
  const int64_t n_tiles = (d.B + d.tile - 1) / d.tile;
  const int64_t hg = (head_group > 0 && d.N % head_group == 0) ? head_group : 1;
  const int64_t n_groups = d.N / hg;
  AT_DISPATCH_FLOATING_TYPES(Wx.scalar_type(), "rnn_forward", [&] {
    at::parallel_for(0, n_groups * n_tiles, grain(d, n_groups * n_tiles),
                     [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t n0 = (item % n_groups) * hg, tb = item / n_groups;
        const int64_t b0 = tb * d.tile, bt = std::min(d.tile, d.B - b0);
        forward_item<scalar_t>(fn, d, n0, hg, b0, bt, Wx.data_ptr<scalar_t>(), Rt.data_ptr<scalar_t>(),
                               bias.data_ptr<scalar_t>(), s0.data_ptr<scalar_t>(),
                               out.data_ptr<scalar_t>(),
                               store_gates ? gates.data_ptr<scalar_t>() : nullptr, first_slstm,
                               fw_clip > 0, static_cast<scalar_t>(fw_clip));
      }
    });
  });
  return {out, gates};
}

// Returns (dWx [B, T, Gw, N, D], dR_parts [tiles, N, Gr*D, D], db_parts [tiles, Gt, N, D],
// ds0 [S, B, N, D]).
std::vector<at::Tensor> rnn_backward(std::vector<int64_t> spec, at::Tensor Rf, at::Tensor s0,
                                     at::Tensor out, at::Tensor gates, at::Tensor dout,
                                     at::Tensor dlast, bool first_slstm, double bw_clip,
                                     int64_t tile, int64_t head_group) {
  const int fn = int(spec[0]);
  const Dims d = make_dims(spec, out.size(1), out.size(2), out.size(3), out.size(4), tile);
  TORCH_CHECK(out.size(0) == d.S, "out does not match the cell spec");
  const int64_t n_tiles = (d.B + d.tile - 1) / d.tile;
  auto dWx = empty_huge({d.B, d.T, d.Gw, d.N, d.D}, out.options());
  auto dR = at::zeros({n_tiles, d.N, d.Gr * d.D, d.D}, out.options());
  auto db = at::zeros({n_tiles, d.Gt, d.N, d.D}, out.options());
  auto ds0 = at::empty({d.S, d.B, d.N, d.D}, out.options());
  const bool has_dout = dout.defined(), has_dlast = dlast.defined();
  const int64_t hg = (head_group > 0 && d.N % head_group == 0) ? head_group : 1;
  const int64_t n_groups = d.N / hg;
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "rnn_backward", [&] {
    at::parallel_for(0, n_groups * n_tiles, grain(d, n_groups * n_tiles),
                     [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t n0 = (item % n_groups) * hg, tb = item / n_groups;
        const int64_t b0 = tb * d.tile, bt = std::min(d.tile, d.B - b0);
        backward_item<scalar_t>(
            fn, d, n0, hg, b0, bt, tb, Rf.data_ptr<scalar_t>(), s0.data_ptr<scalar_t>(),
            out.data_ptr<scalar_t>(), gates.data_ptr<scalar_t>(),
            has_dout ? dout.data_ptr<scalar_t>() : nullptr,
            has_dlast ? dlast.data_ptr<scalar_t>() : nullptr, dWx.data_ptr<scalar_t>(),
            dR.data_ptr<scalar_t>(), db.data_ptr<scalar_t>(), ds0.data_ptr<scalar_t>(),
            first_slstm, bw_clip > 0, static_cast<scalar_t>(bw_clip));
      }
    });
  });
  return {dWx, dR, db, ds0};
}

// Buffer pool control: (bytes held, bytes held by free buffers, limit).
std::vector<int64_t> pool_stats() {
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mu);
  int64_t held = 0, free_bytes = 0;
  for (auto& t : p.bufs) {
    held += int64_t(t.nbytes());
    if (is_free(t)) free_bytes += int64_t(t.nbytes());
  }
  return {held, free_bytes, p.limit};
}

// Sets the pool's limit (bytes) and drops free buffers above it; returns the bytes dropped.
int64_t pool_set_limit(int64_t limit) {
  TORCH_CHECK(limit >= 0, "the pool limit must be >= 0 bytes, got ", limit);
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mu);
  p.limit = limit;
  return shrink_locked(p, limit);
}

// Drops every free buffer; returns the bytes released. Buffers still in use stay tracked.
int64_t pool_release() {
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mu);
  return shrink_locked(p, 0);
}

bool built_with_openmp() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &rnn_forward, "FlashRNN CPU forward");
  m.def("backward", &rnn_backward, "FlashRNN CPU backward");
  m.def("pool_stats", &pool_stats, "(bytes held, bytes free, limit) of the output buffer pool");
  m.def("pool_set_limit", &pool_set_limit, "set the pool's byte limit; returns bytes dropped");
  m.def("pool_release", &pool_release, "drop all free pooled buffers; returns bytes released");
  m.def("built_with_openmp", &built_with_openmp, "whether at::parallel_for uses threads");
}
