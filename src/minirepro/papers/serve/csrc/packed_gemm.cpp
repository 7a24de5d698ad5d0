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
