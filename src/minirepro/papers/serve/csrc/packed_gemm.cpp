// y = x @ W^T for the few rows of a decoding batch, with W packed once into column panels.
//
// Decoding multiplies a handful of rows (one per running sequence) by every weight matrix,
// so each step streams all the weights from memory and uses each weight a few times. BLAS
// sgemm pays for repacking W on every call and is tuned for large M. Here W is packed at load
// time into panels of 16 output features, each panel stored k-major (K x 16 floats, one
// contiguous run), and a 6 x 16 register tile (12 vector accumulators: 6 rows x two 8-float
// halves) walks down a panel: per k, two vector loads of W, six broadcasts of x, twelve FMAs.
// A panel is read from memory once and re-read from L1/L2 for the next 6 rows.
//
// Each output is a plain k-ordered sum (a different order from BLAS: results differ from
// F.linear by float rounding, ~1e-6 relative).

#include <torch/extension.h>

#include <algorithm>
#include <cstring>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

namespace {

typedef float v8f __attribute__((vector_size(32)));
constexpr int64_t NR = 16;  // output features per panel
constexpr int64_t MR = 6;   // rows per register tile

inline v8f load8(const float* p) {
  v8f x;
  std::memcpy(&x, p, sizeof(x));
  return x;
}

// rows x[0 .. R-1] (row stride ldx) times one panel (K x 16) -> y rows (stride ldy), n cols.
// `ahead`, if not null, is the next panel: its k-th row (one 64-byte line) is prefetched
// while this panel's k-th row is used, so memory streams while the tile computes.
template <int R>
void tile(const float* x, int64_t ldx, const float* panel, int64_t K, float* y, int64_t ldy,
          int64_t n, const float* ahead) {
  v8f acc[R][2];
  for (int i = 0; i < R; ++i) acc[i][0] = acc[i][1] = v8f{};
  for (int64_t k = 0; k < K; ++k) {
    if (ahead) __builtin_prefetch(ahead + k * NR);
    const v8f w0 = load8(panel + k * NR), w1 = load8(panel + k * NR + 8);
    for (int i = 0; i < R; ++i) {
      const float xv = x[i * ldx + k];
      acc[i][0] += xv * w0;
      acc[i][1] += xv * w1;
    }
  }
  for (int i = 0; i < R; ++i) {
    float out[NR];
    std::memcpy(out, &acc[i][0], sizeof(v8f));
    std::memcpy(out + 8, &acc[i][1], sizeof(v8f));
    std::memcpy(y + i * ldy, out, n * sizeof(float));
  }
}

void tile_rows(int64_t r, const float* x, int64_t ldx, const float* panel, int64_t K, float* y,
               int64_t ldy, int64_t n, const float* ahead) {
  switch (r) {
    case 6: return tile<6>(x, ldx, panel, K, y, ldy, n, ahead);
    case 5: return tile<5>(x, ldx, panel, K, y, ldy, n, ahead);
    case 4: return tile<4>(x, ldx, panel, K, y, ldy, n, ahead);
    case 3: return tile<3>(x, ldx, panel, K, y, ldy, n, ahead);
    case 2: return tile<2>(x, ldx, panel, K, y, ldy, n, ahead);
    default: return tile<1>(x, ldx, panel, K, y, ldy, n, ahead);
  }
}

}  // namespace

// W (N, K) -> panels (ceil(N / 16), K, 16), zero-padded past N
torch::Tensor pack_weight(const torch::Tensor& w) {
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == torch::kFloat && w.device().is_cpu(),
              "pack_weight needs a 2-D float32 CPU weight, got ", w.sizes(), " ", w.scalar_type());
  auto wc = w.contiguous();
  const int64_t N = wc.size(0), K = wc.size(1), P = (N + NR - 1) / NR;
  auto packed = torch::zeros({P, K, NR}, wc.options());
  const float* src = wc.data_ptr<float>();
  float* dst = packed.data_ptr<float>();
  at::parallel_for(0, P, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p)
      for (int64_t j = 0; j < NR && p * NR + j < N; ++j)
        for (int64_t k = 0; k < K; ++k) dst[(p * K + k) * NR + j] = src[(p * NR + j) * K + k];
  });
  return packed;
}

// x (M, K) @ W^T with W given as pack_weight(W) and its row count N -> (M, N)
torch::Tensor packed_linear(const torch::Tensor& x, const torch::Tensor& packed, int64_t N) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat && x.device().is_cpu(),
              "packed_linear needs a 2-D float32 CPU input, got ", x.sizes());
  TORCH_CHECK(packed.dim() == 3 && packed.size(2) == NR && packed.scalar_type() == torch::kFloat,
              "packed_linear needs a weight from pack_weight");
  const int64_t M = x.size(0), K = x.size(1), P = packed.size(0);
  TORCH_CHECK(packed.size(1) == K, "input has ", K, " features, the weight ", packed.size(1));
  TORCH_CHECK(N > (P - 1) * NR && N <= P * NR, "N = ", N, " does not match ", P, " panels");
  auto xc = x.contiguous();
  auto y = torch::empty({M, N}, xc.options());
  const float* xp = xc.data_ptr<float>();
  const float* wp = packed.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, P, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = std::min(NR, N - p * NR);
      const float* ahead = p + 1 < end ? wp + (p + 1) * K * NR : nullptr;
      for (int64_t m = 0; m < M; m += MR) {
        tile_rows(std::min(MR, M - m), xp + m * K, K, wp + p * K * NR, K, yp + m * N + p * NR,
                  N, n, m == 0 ? ahead : nullptr);
      }
    }
  });
  return y;
}

// ---------------------------------------------------------------------------------------------
// Weight-only int8: the same 16-column panels, one int8 per weight (16 bytes per k), and a
// float32 scale per output feature. Per k a tile widens the panel's 16 int8 to 16 floats once
// (sign-extend + convert) and uses them for all of its rows; the scale multiplies the finished
// sums (y[m, n] = scale[n] * sum_k x[m, k] q[n, k]). Decoding is bound by the weight bytes read,
// so reading a quarter of fp32's is what makes it faster; a single row has two accumulator
// chains (even and odd k) so the FMA latency does not bound it.

namespace {

typedef float v16f __attribute__((vector_size(64)));
typedef int8_t v16b __attribute__((vector_size(16)));

typedef int32_t v16i __attribute__((vector_size(64)));

// 16 int8 -> 16 floats. GCC scalarises __builtin_convertvector from int8 lanes, so with
// AVX-512 this is vpmovsxbd + vcvtdq2ps; elsewhere the generic (slower) conversion.
inline v16f widen16(const int8_t* p) {
#ifdef __AVX512F__
  const __m512i w = _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return reinterpret_cast<v16f>(_mm512_cvtepi32_ps(w));
#else
  v16b b;
  std::memcpy(&b, p, sizeof(b));
  return __builtin_convertvector(__builtin_convertvector(b, v16i), v16f);
#endif
}

template <int R>
void tile_i8(const float* x, int64_t ldx, const int8_t* panel, int64_t K, const float* scale,
             float* y, int64_t ldy, int64_t n, const int8_t* ahead) {
  v16f acc[R][2];
  for (int i = 0; i < R; ++i) acc[i][0] = acc[i][1] = v16f{};
  int64_t k = 0;
  for (; k + 2 <= K; k += 2) {
    if (ahead && (k & 3) == 0) __builtin_prefetch(ahead + k * NR);  // 4 k = one 64-byte line
    const v16f w0 = widen16(panel + k * NR), w1 = widen16(panel + (k + 1) * NR);
    for (int i = 0; i < R; ++i) {
      acc[i][0] += x[i * ldx + k] * w0;
      acc[i][1] += x[i * ldx + k + 1] * w1;
    }
  }
  if (k < K) {
    const v16f w0 = widen16(panel + k * NR);
    for (int i = 0; i < R; ++i) acc[i][0] += x[i * ldx + k] * w0;
  }
  float s[NR] = {};
  std::memcpy(s, scale, n * sizeof(float));
  v16f sv;
  std::memcpy(&sv, s, sizeof(sv));
  for (int i = 0; i < R; ++i) {
    const v16f r = (acc[i][0] + acc[i][1]) * sv;
    float out[NR];
    std::memcpy(out, &r, sizeof(r));
    std::memcpy(y + i * ldy, out, n * sizeof(float));
  }
}

void tile_rows_i8(int64_t r, const float* x, int64_t ldx, const int8_t* panel, int64_t K,
                  const float* scale, float* y, int64_t ldy, int64_t n, const int8_t* ahead) {
  switch (r) {
    case 6: return tile_i8<6>(x, ldx, panel, K, scale, y, ldy, n, ahead);
    case 5: return tile_i8<5>(x, ldx, panel, K, scale, y, ldy, n, ahead);
    case 4: return tile_i8<4>(x, ldx, panel, K, scale, y, ldy, n, ahead);
    case 3: return tile_i8<3>(x, ldx, panel, K, scale, y, ldy, n, ahead);
    case 2: return tile_i8<2>(x, ldx, panel, K, scale, y, ldy, n, ahead);
    default: return tile_i8<1>(x, ldx, panel, K, scale, y, ldy, n, ahead);
  }
}

}  // namespace

// q (N, K) int8 -> panels (ceil(N / 16), K, 16) int8, zero-padded past N
torch::Tensor pack_weight_int8(const torch::Tensor& q) {
  TORCH_CHECK(q.dim() == 2 && q.scalar_type() == torch::kChar && q.device().is_cpu(),
              "pack_weight_int8 needs a 2-D int8 CPU weight, got ", q.sizes(), " ",
              q.scalar_type());
  auto qc = q.contiguous();
  const int64_t N = qc.size(0), K = qc.size(1), P = (N + NR - 1) / NR;
  auto packed = torch::zeros({P, K, NR}, qc.options());
  const int8_t* src = qc.data_ptr<int8_t>();
  int8_t* dst = packed.data_ptr<int8_t>();
  at::parallel_for(0, P, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p)
      for (int64_t j = 0; j < NR && p * NR + j < N; ++j)
        for (int64_t k = 0; k < K; ++k) dst[(p * K + k) * NR + j] = src[(p * NR + j) * K + k];
  });
  return packed;
}

// x (M, K) float32 @ (scale[:, None] * q).T with q given as pack_weight_int8(q) -> (M, N) float32
torch::Tensor packed_linear_int8(const torch::Tensor& x, const torch::Tensor& packed,
                                 const torch::Tensor& scale, int64_t N) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat && x.device().is_cpu(),
              "packed_linear_int8 needs a 2-D float32 CPU input, got ", x.sizes());
  TORCH_CHECK(packed.dim() == 3 && packed.size(2) == NR && packed.scalar_type() == torch::kChar,
              "packed_linear_int8 needs a weight from pack_weight_int8");
  const int64_t M = x.size(0), K = x.size(1), P = packed.size(0);
  TORCH_CHECK(packed.size(1) == K, "input has ", K, " features, the weight ", packed.size(1));
  TORCH_CHECK(N > (P - 1) * NR && N <= P * NR, "N = ", N, " does not match ", P, " panels");
  TORCH_CHECK(scale.dim() == 1 && scale.size(0) == N && scale.scalar_type() == torch::kFloat,
              "scale must be (N,) float32");
  auto xc = x.contiguous();
  auto sc = scale.contiguous();
  auto y = torch::empty({M, N}, xc.options());
  const float* xp = xc.data_ptr<float>();
  const int8_t* wp = packed.data_ptr<int8_t>();
  const float* sp = sc.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, P, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = std::min(NR, N - p * NR);
      const int8_t* ahead = p + 1 < end ? wp + (p + 1) * K * NR : nullptr;
      for (int64_t m = 0; m < M; m += MR) {
        tile_rows_i8(std::min(MR, M - m), xp + m * K, K, wp + p * K * NR, K, sp + p * NR,
                     yp + m * N + p * NR, N, n, m == 0 ? ahead : nullptr);
      }
    }
  });
  return y;
}
