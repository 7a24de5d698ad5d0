// Decode attention straight from a paged KV cache, in one pass over the keys and values.
//
// The torch formulation (runner.py) gathers each sequence's keys and values out of their
// blocks into a padded (B, H_kv, T, D) tensor and then calls SDPA: the KV bytes cross the
// memory bus three times (gather read, gather write, SDPA read) and the gathered tensor is a
// fresh allocation every layer. Decoding is memory-bound on a CPU, so this kernel reads each
// key and value once, block by block through the block table, with an online softmax per
// block (flash-decoding without the split over keys). The G = H / H_kv query heads that share
// a KV head are computed together, so a key row is loaded once for all of them.
//
// Layouts: q (B, H, D); k_cache, v_cache (num_blocks, block_size, H_kv, D); block_tables
// (B, max_blocks) int32 or int64; context_lens (B,) int64 (keys 0 .. len-1 are attended).
// Work items are sequences, spread over torch's intra-op threads.
//
// The cache may be float32 or bfloat16 (q and the output are float32 either way): a bf16
// key or value row is widened to float32 in registers (a bf16 is the top half of a float),
// so a bf16 cache reads half the bytes and computes the same float32 dot products.

#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace {

// Eight floats, as GCC/Clang vector extensions: one AVX register on x86, two NEON ones on ARM.
typedef float v8f __attribute__((vector_size(32)));

inline v8f load8(const float* p) {
  v8f x;
  std::memcpy(&x, p, sizeof(x));  // an unaligned vector load
  return x;
}

typedef int32_t v8i __attribute__((vector_size(32)));
typedef uint16_t v8u16 __attribute__((vector_size(16)));

// Eight bf16 (their raw bits) widened to floats: shift each into the top half of 32 bits.
inline v8f load8(const at::BFloat16* p) {
  v8u16 h;
  std::memcpy(&h, p, sizeof(h));
  const v8i w = __builtin_convertvector(h, v8i) << 16;
  v8f x;
  std::memcpy(&x, &w, sizeof(x));
  return x;
}

// e^x of eight floats at once for x <= 0 (a softmax's shifted scores): x = n ln2 + r with
// |r| <= ln2 / 2, e^r by a degree-6 polynomial (relative error ~2e-7), 2^n through the
// exponent bits. Below -87 (where e^x leaves float's normal range) it returns ~1e-38.
inline v8f exp8(v8f x) {
  const v8f lo = v8f{} - 87.0f;
  x = x < lo ? lo : x;
  const v8f magic = v8f{} + 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const v8f n = (x * 1.44269504088896341f + magic) - magic;
  const v8f r = (x - n * 0.693359375f) - n * -2.12194440e-4f;  // ln 2 in two parts
  v8f p = v8f{} + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const v8i bits = (__builtin_convertvector(n, v8i) + 127) << 23;
  v8f scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

inline float hsum(v8f x) {
  return ((x[0] + x[1]) + (x[2] + x[3])) + ((x[4] + x[5]) + (x[6] + x[7]));
}

// Asks for a block's bytes before they are needed: the hardware prefetcher follows a
// stream inside a block but cannot guess the next block of the table.
template <typename kv_t>
inline void prefetch(const kv_t* p, int64_t elems) {
  constexpr int64_t line = 64 / sizeof(kv_t);  // elements of one 64-byte line
  for (int64_t i = 0; i < elems; i += line) __builtin_prefetch(p + i);
}

template <typename index_t, typename kv_t>
void decode_kernel(const float* q, const kv_t* k, const kv_t* v, const index_t* tables,
                   const int64_t* lens, float* out, int64_t B, int64_t H, int64_t Hkv,
                   int64_t D, int64_t bs, int64_t max_blocks, float scale) {
  const int64_t G = H / Hkv, DV = D / 8;  // D is a multiple of 8 (checked by the caller)
  const int64_t row = Hkv * D;  // floats of one position (all KV heads) in a block
  const float neg_inf = -std::numeric_limits<float>::infinity();
  // One work item = one sequence, all heads: a block's keys (and values) are then read as
  // one contiguous run of block_size * H_kv * D floats.
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<v8f> qv(H * DV), acc(H * DV);
    std::vector<float> scores(H * bs), m(H), l(H);
    for (int64_t b = begin; b < end; ++b) {
      const float* qb = q + b * H * D;
      for (int64_t i = 0; i < H * DV; ++i) qv[i] = load8(qb + 8 * i) * scale;
      const int64_t len = lens[b];
      std::fill(acc.begin(), acc.end(), v8f{});
      std::fill(m.begin(), m.end(), neg_inf);
      std::fill(l.begin(), l.end(), 0.f);
      const int64_t nblocks = (len + bs - 1) / bs;
      const index_t* table = tables + b * max_blocks;
      for (int64_t j = 0; j < nblocks; ++j) {
        const int64_t n = std::min(bs, len - j * bs);
        const kv_t* kb = k + static_cast<int64_t>(table[j]) * bs * row;
        const kv_t* vb = v + static_cast<int64_t>(table[j]) * bs * row;
        if (j + 1 < nblocks) {
          const int64_t next = static_cast<int64_t>(table[j + 1]) * bs * row;
          const int64_t n1 = std::min(bs, len - (j + 1) * bs) * row;
          prefetch(k + next, n1);
          prefetch(v + next, n1);
        }
        for (int64_t g = 0; g < H; ++g) {  // query head g reads KV head g / G
          const kv_t* kh = kb + (g / G) * D;
          const v8f* qg = qv.data() + g * DV;
          float* sg = scores.data() + g * bs;
          int64_t t = 0;
          for (; t + 4 <= n; t += 4) {  // four keys at once: four independent FMA chains
            const kv_t* k0 = kh + t * row;
            v8f s0{}, s1{}, s2{}, s3{};
            for (int64_t c = 0; c < DV; ++c) {
              const v8f qc = qg[c];
              s0 += qc * load8(k0 + 8 * c);
              s1 += qc * load8(k0 + row + 8 * c);
              s2 += qc * load8(k0 + 2 * row + 8 * c);
              s3 += qc * load8(k0 + 3 * row + 8 * c);
            }
            sg[t] = hsum(s0);
            sg[t + 1] = hsum(s1);
            sg[t + 2] = hsum(s2);
            sg[t + 3] = hsum(s3);
          }
          for (; t < n; ++t) {
            const kv_t* kt = kh + t * row;
            v8f s0{};
            for (int64_t c = 0; c < DV; ++c) s0 += qg[c] * load8(kt + 8 * c);
            sg[t] = hsum(s0);
          }
        }
        for (int64_t g = 0; g < H; ++g) {
          float* s = scores.data() + g * bs;
          float mx = m[g];
          for (int64_t t = 0; t < n; ++t) mx = std::max(mx, s[t]);
          const float corr = std::exp(m[g] - mx);  // exp(-inf) = 0 on the first block
          float sum = l[g] * corr;
          int64_t t = 0;
          for (; t + 8 <= n; t += 8) {
            const v8f e = exp8(load8(s + t) - mx);
            std::memcpy(s + t, &e, sizeof(e));
            sum += hsum(e);
          }
          for (; t < n; ++t) {
            s[t] = std::exp(s[t] - mx);
            sum += s[t];
          }
          m[g] = mx;
          l[g] = sum;
          if (corr != 1.f) {
            for (int64_t c = 0; c < DV; ++c) acc[g * DV + c] *= corr;
          }
        }
        for (int64_t t = 0; t < n; ++t) {
          for (int64_t h = 0; h < Hkv; ++h) {
            const kv_t* vt = vb + t * row + h * D;
            for (int64_t g = h * G; g < (h + 1) * G; ++g) {
              const float p = scores[g * bs + t];
              v8f* a = acc.data() + g * DV;
              for (int64_t c = 0; c < DV; ++c) a[c] += p * load8(vt + 8 * c);
            }
          }
        }
      }
      float* o = out + b * H * D;
      for (int64_t g = 0; g < H; ++g) {
        const float inv = 1.f / l[g];
        for (int64_t c = 0; c < DV; ++c) {
          const v8f r = acc[g * DV + c] * inv;
          std::memcpy(o + g * D + 8 * c, &r, sizeof(r));
        }
      }
    }
  });
}

template <typename index_t>
void check_blocks(const index_t* tables, const int64_t* lens, int64_t B, int64_t max_blocks,
                  int64_t bs, int64_t num_blocks) {
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t j = 0; j < (lens[b] + bs - 1) / bs; ++j) {
      const int64_t id = static_cast<int64_t>(tables[b * max_blocks + j]);
      TORCH_CHECK(id >= 0 && id < num_blocks, "block id ", id, " of sequence ", b,
                  " is out of range [0, ", num_blocks, ")");
    }
  }
}

}  // namespace

torch::Tensor paged_decode_attention(const torch::Tensor& q, const torch::Tensor& k_cache,
                                     const torch::Tensor& v_cache,
                                     const torch::Tensor& block_tables,
                                     const torch::Tensor& context_lens, double scale) {
  TORCH_CHECK(q.dim() == 3, "q must be (B, H, D), got ", q.sizes());
  TORCH_CHECK(k_cache.dim() == 4 && k_cache.sizes() == v_cache.sizes(),
              "k_cache and v_cache must both be (num_blocks, block_size, H_kv, D), got ",
              k_cache.sizes(), " and ", v_cache.sizes());
  const auto kv_type = k_cache.scalar_type();
  TORCH_CHECK(q.scalar_type() == torch::kFloat && v_cache.scalar_type() == kv_type &&
                  (kv_type == torch::kFloat || kv_type == torch::kBFloat16),
              "the paged attention kernel takes a float32 q and a float32 or bfloat16 cache");
  TORCH_CHECK(q.device().is_cpu() && k_cache.device().is_cpu() && v_cache.device().is_cpu(),
              "the paged attention kernel runs on the CPU");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "the KV cache must be contiguous");
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2);
  const int64_t bs = k_cache.size(1), Hkv = k_cache.size(2);
  TORCH_CHECK(k_cache.size(3) == D, "head_dim of q (", D, ") and of the cache (", k_cache.size(3),
              ") differ");
  TORCH_CHECK(D % 8 == 0, "head_dim must be a multiple of 8, got ", D);
  TORCH_CHECK(Hkv > 0 && H % Hkv == 0, "query heads (", H, ") must be a multiple of KV heads (",
              Hkv, ")");
  TORCH_CHECK(block_tables.dim() == 2 && block_tables.size(0) == B,
              "block_tables must be (B, max_blocks) with B = ", B, ", got ", block_tables.sizes());
  TORCH_CHECK(block_tables.scalar_type() == torch::kInt || block_tables.scalar_type() == torch::kLong,
              "block_tables must be int32 or int64");
  TORCH_CHECK(context_lens.dim() == 1 && context_lens.size(0) == B &&
                  context_lens.scalar_type() == torch::kLong,
              "context_lens must be (B,) int64");
  const int64_t max_blocks = block_tables.size(1);
  auto lens = context_lens.contiguous();
  auto tables = block_tables.contiguous();
  const int64_t* lp = lens.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(lp[b] >= 1 && lp[b] <= max_blocks * bs, "context length ", lp[b], " of sequence ",
                b, " is not in [1, ", max_blocks * bs, "] (its block table's capacity)");
  }
  const int64_t nb = k_cache.size(0);
  if (tables.scalar_type() == torch::kLong) {
    check_blocks(tables.data_ptr<int64_t>(), lp, B, max_blocks, bs, nb);
  } else {
    check_blocks(tables.data_ptr<int32_t>(), lp, B, max_blocks, bs, nb);
  }
  auto qc = q.contiguous();
  auto out = torch::empty_like(qc);
  auto run = [&](auto* kp, auto* vp) {
    if (tables.scalar_type() == torch::kLong) {
      decode_kernel(qc.data_ptr<float>(), kp, vp, tables.data_ptr<int64_t>(), lp,
                    out.data_ptr<float>(), B, H, Hkv, D, bs, max_blocks,
                    static_cast<float>(scale));
    } else {
      decode_kernel(qc.data_ptr<float>(), kp, vp, tables.data_ptr<int32_t>(), lp,
                    out.data_ptr<float>(), B, H, Hkv, D, bs, max_blocks,
                    static_cast<float>(scale));
    }
  };
  if (kv_type == torch::kFloat) {
    run(k_cache.data_ptr<float>(), v_cache.data_ptr<float>());
  } else {
    run(k_cache.data_ptr<at::BFloat16>(), v_cache.data_ptr<at::BFloat16>());
  }
  return out;
}

// packed_gemm.cpp
torch::Tensor pack_weight(const torch::Tensor& w);
torch::Tensor packed_linear(const torch::Tensor& x, const torch::Tensor& packed, int64_t N);
torch::Tensor pack_weight_int8(const torch::Tensor& q);
torch::Tensor packed_linear_int8(const torch::Tensor& x, const torch::Tensor& packed,
                                 const torch::Tensor& scale, int64_t N);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("paged_decode_attention", &paged_decode_attention,
        "Decode attention over a paged KV cache (one query per sequence, GQA-aware)");
  m.def("pack_weight", &pack_weight, "W (N, K) -> column panels for packed_linear");
  m.def("packed_linear", &packed_linear, "x @ W^T with W from pack_weight");
  m.def("pack_weight_int8", &pack_weight_int8, "int8 q (N, K) -> panels for packed_linear_int8");
  m.def("packed_linear_int8", &packed_linear_int8, "x @ (scale * q)^T, q from pack_weight_int8");
}
