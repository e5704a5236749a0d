// 4-bit linears for few rows, on a CPU (`quantization: int4`, engines/native/cpu_quant.py).
//
// At one decoding sequence a step reads every weight once and the read is the cost, so a 4-bit weight reads in
// about 5/8 of an int8 one's time. Widening 4-bit weights to float32 for float FMAs would cost more instructions
// than the read saves, so this kernel multiplies in integers, as llama.cpp's Q4_1 x Q8_1 dot product does:
//
// - the weight [out, in] is stored by output column, each column's record one after the other, so the read is one
//   stream: [out, in * 5 / 8] bytes. A column's record holds its input columns in blocks of 32, each with its step d
//   and minimum m (w = d * q + m, q in 0..15): first the 4-bit codes of each pair of blocks in 32 bytes (byte j:
//   block 2i's column j in the low nibble, block 2i + 1's in the high one), then every block's d, then every
//   block's m, as float16.
// - each input row is rounded in blocks of 32 to int8, x = dx * xq with dx = max|x| / 127, and sx = dx * sum(xq)
//   is kept for the minimum's share;
// - a block's dot product is then d * dx * sum(q * xq) + m * sx; sum(q * xq) runs in AVX2's byte multiply-add
//   (unsigned 4-bit codes by signed int8 inputs: vpmaddubsw), exact in int32, and the minimums' shares of a column
//   are one dot product over its blocks.
// Threads split the output columns; a tile of 1 row by 4 columns, or 2-4 rows by 2, unpacks each pair of blocks
// once. About 7 instructions a block of 32 weights, so one row reads at the memory's speed.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "ops_cpu.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define OZWELL_Q4_AVX2 1
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace ozwell {
namespace {

constexpr int64_t QK = 32;  // input columns a block holds; a column's record takes 20 bytes a block
constexpr int64_t PREFETCH_BYTES = 4096;  // the hardware prefetchers stop at each 4 KB page (see fused_cpu.cpp)

// The rounded input: xq [rows, in] int8, and per block dx (its step) and sx (dx * the sum of its codes).
struct Q8Rows {
  at::Tensor q, d, s;
};

Q8Rows quantize_rows(const float* x, int64_t rows, int64_t in) {
  const int64_t nb = in / QK;
  Q8Rows r{at::empty({rows, in}, at::kChar), at::empty({rows, nb}, at::kFloat), at::empty({rows, nb}, at::kFloat)};
  int8_t* q = r.q.data_ptr<int8_t>();
  float* d = r.d.data_ptr<float>();
  float* s = r.s.data_ptr<float>();
  at::parallel_for(0, rows * nb, 256, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      const float* xb = x + block * QK;  // rows are contiguous, so block i of all rows is x + i * 32
      float amax = 0.f;
      for (int64_t i = 0; i < QK; ++i) amax = std::max(amax, std::fabs(xb[i]));
      const float step = amax / 127.f, inv = amax > 0.f ? 127.f / amax : 0.f;
      int32_t sum = 0;
      for (int64_t i = 0; i < QK; ++i) {
        const int32_t v = static_cast<int32_t>(std::nearbyint(xb[i] * inv));
        q[block * QK + i] = static_cast<int8_t>(v);
        sum += v;
      }
      d[block] = step;
      s[block] = step * static_cast<float>(sum);
    }
  });
  return r;
}

inline float half_at(const uint8_t* p, int64_t i) {
  uint16_t h;
  std::memcpy(&h, p + 2 * i, 2);
#ifdef OZWELL_Q4_AVX2
  return _cvtsh_ss(h);
#else
  return static_cast<float>(c10::Half(h, c10::Half::from_bits()));
#endif
}

// For MT rows and one column record: scale[m][b] = d_b * dx[m][b] (what block b's integer sum is multiplied by), and
// the return: the minimums' share, sum over blocks of m_b * sx[m][b], for each row.
template <int MT>
inline void column_scales(const uint8_t* steps, const uint8_t* mins, int64_t nb, const float* xd, const float* xs,
                          float* scale, float* min_share) {
  for (int m = 0; m < MT; ++m) min_share[m] = 0.f;
  int64_t b = 0;
#ifdef OZWELL_Q4_AVX2
  __m256 share[MT];
  for (int m = 0; m < MT; ++m) share[m] = _mm256_setzero_ps();
  for (; b + 8 <= nb; b += 8) {
    const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(steps + 2 * b)));
    const __m256 mn = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(mins + 2 * b)));
    for (int m = 0; m < MT; ++m) {
      _mm256_storeu_ps(scale + m * nb + b, _mm256_mul_ps(d, _mm256_loadu_ps(xd + m * nb + b)));
      share[m] = _mm256_fmadd_ps(mn, _mm256_loadu_ps(xs + m * nb + b), share[m]);
    }
  }
  for (int m = 0; m < MT; ++m) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(share[m]), _mm256_extractf128_ps(share[m], 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    min_share[m] = _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
  }
#endif
  for (; b < nb; ++b) {
    const float d = half_at(steps, b), mn = half_at(mins, b);
    for (int m = 0; m < MT; ++m) {
      scale[m * nb + b] = d * xd[m * nb + b];
      min_share[m] += mn * xs[m * nb + b];
    }
  }
}

#ifdef OZWELL_Q4_AVX2
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif

// MT rows (xq: the first row's codes; xd, xs: its blocks' dx and sx; rows `in` codes and nb blocks apart) by NC
// column records (w: the first; records nb * 20 bytes apart), into out (rows ldo apart). scratch: MT * nb floats
// for each column.
template <int MT, int NC>
inline void q4_tile(const uint8_t* w, int64_t nb, const int8_t* xq, const float* xd, const float* xs, int64_t in,
                    float* out, int64_t ldo, const float* bias, float* scratch) {
  const int64_t record = nb * 20;
  float min_share[NC][MT];
  for (int c = 0; c < NC; ++c) {
    const uint8_t* steps = w + c * record + nb * 16;
    column_scales<MT>(steps, steps + nb * 2, nb, xd, xs, scratch + c * MT * nb, min_share[c]);
  }
#ifdef OZWELL_Q4_AVX2
  const __m256i low = _mm256_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[NC][MT];
  for (int c = 0; c < NC; ++c)
    for (int m = 0; m < MT; ++m) acc[c][m] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; b += 2) {
    for (int c = 0; c < NC; ++c) {
      const uint8_t* pair = w + c * record + b * 16;
      _mm_prefetch(reinterpret_cast<const char*>(pair) + PREFETCH_BYTES, _MM_HINT_T0);
      const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(pair));
      const __m256i even = _mm256_and_si256(raw, low), odd = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
      const float* sc = scratch + c * MT * nb;
      for (int m = 0; m < MT; ++m) {
        const int8_t* xb = xq + m * in + b * QK;
        const __m256i d0 = _mm256_madd_epi16(
            _mm256_maddubs_epi16(even, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb))), ones);
        const __m256i d1 = _mm256_madd_epi16(
            _mm256_maddubs_epi16(odd, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb + QK))), ones);
        acc[c][m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d0), _mm256_broadcast_ss(sc + m * nb + b), acc[c][m]);
        acc[c][m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d1), _mm256_broadcast_ss(sc + m * nb + b + 1), acc[c][m]);
      }
    }
  }
  for (int c = 0; c < NC; ++c)
    for (int m = 0; m < MT; ++m) out[m * ldo + c] = hsum(acc[c][m]) + min_share[c][m] + (bias ? bias[c] : 0.f);
#else  // the same in plain C++
  for (int c = 0; c < NC; ++c)
    for (int m = 0; m < MT; ++m) {
      float acc = 0.f;
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* pair = w + c * record + (b / 2) * 32;
        const int shift = (b % 2) * 4;
        const int8_t* xb = xq + m * in + b * QK;
        int32_t dot = 0;
        for (int j = 0; j < 32; ++j) dot += ((pair[j] >> shift) & 0x0F) * xb[j];
        acc += static_cast<float>(dot) * scratch[c * MT * nb + m * nb + b];
      }
      out[m * ldo + c] = acc + min_share[c][m] + (bias ? bias[c] : 0.f);
    }
#endif
}

// Rows [r, r + MT) by columns [c0, c1) (a multiple of NC).
template <int MT, int NC>
inline void q4_rows(const uint8_t* w, int64_t nb, const Q8Rows& x, int64_t r, int64_t in, int64_t c0, int64_t c1,
                    float* out, int64_t out_features, const float* bias, float* scratch) {
  const int8_t* xq = x.q.data_ptr<int8_t>() + r * in;
  const float* xd = x.d.data_ptr<float>() + r * nb;
  const float* xs = x.s.data_ptr<float>() + r * nb;
  for (int64_t c = c0; c < c1; c += NC)
    q4_tile<MT, NC>(w + c * nb * 20, nb, xq, xd, xs, in, out + r * out_features + c, out_features,
                    bias ? bias + c : nullptr, scratch);
}

}  // namespace

// x [..., in] float32, blocks [out, in * 5 / 8] uint8 (the layout above; in a multiple of 64, out of 4), bias [out]
// or None -> [..., out] float32
at::Tensor q4_linear(const at::Tensor& x_in, const at::Tensor& blocks, const c10::optional<at::Tensor>& bias_in) {
  TORCH_CHECK(x_in.scalar_type() == at::kFloat && blocks.scalar_type() == at::kByte && blocks.dim() == 2 &&
                  blocks.is_contiguous() && blocks.size(1) % 40 == 0 && x_in.size(-1) * 5 == blocks.size(1) * 8 &&
                  blocks.size(0) % 4 == 0,
              "q4_linear: float32 x [..., in] and 4-bit blocks [out, in * 5 / 8] (uint8; in a multiple of 64, out of 4)");
  const int64_t in = x_in.size(-1), nb = in / QK, out_features = blocks.size(0);
  const auto x = x_in.reshape({-1, in}).contiguous();
  const int64_t rows = x.size(0);
  const bool has_bias = bias_in.has_value() && bias_in->defined();
  const auto bias = has_bias ? bias_in->to(at::kFloat).contiguous() : at::Tensor();
  TORCH_CHECK(!has_bias || bias.numel() == out_features, "q4_linear: bias must be [out]");
  auto sizes = x_in.sizes().vec();
  sizes.back() = out_features;
  auto out = at::empty({rows, out_features}, x.options());
  if (rows == 0) return out.view(sizes);
  const Q8Rows xq = quantize_rows(x.data_ptr<float>(), rows, in);
  const uint8_t* w = blocks.data_ptr<uint8_t>();
  const float* bp = has_bias ? bias.data_ptr<float>() : nullptr;
  float* op = out.data_ptr<float>();
  at::parallel_for(0, out_features / 4, 4, [&](int64_t p0, int64_t p1) {
    const int64_t c0 = p0 * 4, c1 = p1 * 4;
    std::vector<float> scratch(4 * nb * 4);
    // columns in chunks whose records stay in cache while every row tile passes over them
    constexpr int64_t chunk = 32;
    for (int64_t cc = c0; cc < c1; cc += chunk) {
      const int64_t ce = std::min(c1, cc + chunk);
      if (rows == 1) {
        q4_rows<1, 4>(w, nb, xq, 0, in, cc, ce, op, out_features, bp, scratch.data());
        continue;
      }
      int64_t r = 0;
      for (; r + 4 <= rows; r += 4) q4_rows<4, 2>(w, nb, xq, r, in, cc, ce, op, out_features, bp, scratch.data());
      if (rows - r == 3) q4_rows<3, 2>(w, nb, xq, r, in, cc, ce, op, out_features, bp, scratch.data());
      if (rows - r == 2) q4_rows<2, 2>(w, nb, xq, r, in, cc, ce, op, out_features, bp, scratch.data());
      if (rows - r == 1) q4_rows<1, 4>(w, nb, xq, r, in, cc, ce, op, out_features, bp, scratch.data());
    }
  });
  return out.view(sizes);
}

}  // namespace ozwell
