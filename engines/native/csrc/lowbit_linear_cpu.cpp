// 4- and 6-bit linears for few rows, on a CPU (`quantization: int4` and `int6`, engines/native/cpu_quant.py).
//
// At one decoding sequence a step reads every weight once and the read is the cost, so a weight in fewer bits reads
// in less time. Widening such weights to float32 for float FMAs would cost more instructions than the read saves,
// so this kernel multiplies in integers, as llama.cpp's Q4_1 x Q8_1 and Q6 x Q8 dot products do:
//
// - the weight [out, in] is stored by output column, each column's record one after the other, so the read is one
//   stream. A record holds its input columns in blocks of 32, each with a float16 step d; w = d * q + m for an
//   unsigned code q:
//   - 4-bit (llama.cpp's Q4_1): q in 0..15 with a float16 minimum m per block; 20 bytes a block, [out, in * 5 / 8];
//   - 6-bit (symmetric, as Q8_0 and Q5_0 are): q in 0..63 and m = -32 d; 26 bytes a block, [out, in * 13 / 16].
//   A column's record: the low 4 bits of the codes of each pair of blocks in 32 bytes (byte j: block 2i's column j in
//   the low nibble, block 2i + 1's in the high one); for 6 bits, the top 2 bits of each pair in 16 bytes (byte j,
//   from bit 0: block 2i's columns j and j + 16, block 2i + 1's columns j and j + 16); then every block's d; then,
//   for 4 bits, every block's m.
// - each input row is rounded in blocks of 32 to int8, x = dx * xq with dx = max|x| / 127, and sx = dx * sum(xq)
//   is kept for the minimum's share;
// - a block's dot product is then d * dx * sum(q * xq) + m * sx; sum(q * xq) runs in AVX2's byte multiply-add
//   (unsigned codes by signed int8 inputs: vpmaddubsw; 2 * 63 * 127 fits its int16 sums), exact in int32, and the
//   minimums' shares of a column are one dot product over its blocks.
// Threads split the output columns; a tile of 1 row by 4 columns (2 for 6 bits), or 2-4 rows by 2, unpacks each
// pair of blocks once: 3 instructions for 64 4-bit codes, 7 more for their top bits in 6.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "ops_cpu.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define OZWELL_LOWBIT_AVX2 1
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace ozwell {
namespace {

constexpr int64_t QK = 32;                // input columns a block holds
constexpr int64_t PREFETCH_BYTES = 4096;  // the hardware prefetchers stop at each 4 KB page (see fused_cpu.cpp)

// A record's layout for codes of BITS bits (4: asymmetric, with minimums; 6: symmetric around 32).
template <int BITS>
struct Layout {
  static constexpr int64_t high = BITS == 6 ? 8 : 0;  // bytes of top bits a block
  static constexpr bool minimums = BITS == 4;
  static constexpr int64_t bytes = 16 + high + 2 + (minimums ? 2 : 0);  // a block
  static constexpr float offset = BITS == 6 ? 32.f : 0.f;  // m = -offset * d where no minimum is stored
};

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
  parallel_for(0, rows * nb, 256, [&](int64_t begin, int64_t end) {
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
#ifdef OZWELL_LOWBIT_AVX2
  return _cvtsh_ss(h);
#else
  return static_cast<float>(c10::Half(h, c10::Half::from_bits()));
#endif
}

#ifdef OZWELL_LOWBIT_AVX2
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif

// For MT rows and one column record: scale[m][b] = d_b * dx[m][b] (what block b's integer sum is multiplied by), and
// min_share[m] = the minimums' share, sum over blocks of m_b * sx[m][b]. mins: null where m = -offset * d.
template <int MT>
inline void column_scales(const uint8_t* steps, const uint8_t* mins, float offset, int64_t nb, const float* xd,
                          const float* xs, float* scale, float* min_share) {
  for (int m = 0; m < MT; ++m) min_share[m] = 0.f;
  int64_t b = 0;
#ifdef OZWELL_LOWBIT_AVX2
  __m256 share[MT];
  for (int m = 0; m < MT; ++m) share[m] = _mm256_setzero_ps();
  // blocks 8 at a time; a last part of fewer than 8 takes the last 8 blocks again, its share counted for the new
  // ones only (the scales it writes twice are the same)
  for (; nb >= 8 && b < nb; b += 8) {
    const int64_t first = std::min(b, nb - 8);
    const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(steps + 2 * first)));
    __m256 mn = mins ? _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(mins + 2 * first)))
                     : _mm256_mul_ps(d, _mm256_set1_ps(-offset));
    if (first < b) {  // lanes below b - first were counted
      const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
      mn = _mm256_and_ps(mn, _mm256_castsi256_ps(_mm256_cmpgt_epi32(lane, _mm256_set1_epi32(b - first - 1))));
    }
    for (int m = 0; m < MT; ++m) {
      _mm256_storeu_ps(scale + m * nb + first, _mm256_mul_ps(d, _mm256_loadu_ps(xd + m * nb + first)));
      share[m] = _mm256_fmadd_ps(mn, _mm256_loadu_ps(xs + m * nb + first), share[m]);
    }
  }
  for (int m = 0; m < MT; ++m) min_share[m] = hsum(share[m]);  // (past the loop b >= nb: no scalar blocks left)
#endif
  for (; b < nb; ++b) {
    const float d = half_at(steps, b), mn = mins ? half_at(mins, b) : -offset * d;
    for (int m = 0; m < MT; ++m) {
      scale[m * nb + b] = d * xd[m * nb + b];
      min_share[m] += mn * xs[m * nb + b];
    }
  }
}

#ifdef OZWELL_LOWBIT_AVX2

// The codes of pair p of a record as two vectors of 32 unsigned bytes (the even block's, the odd block's).
template <int BITS>
inline void unpack_pair(const uint8_t* codes, const uint8_t* high, int64_t p, __m256i& even, __m256i& odd) {
  const __m256i low = _mm256_set1_epi8(0x0F);
  const uint8_t* pair = codes + p * 32;
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(pair));
  even = _mm256_and_si256(raw, low);
  odd = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
  if constexpr (BITS == 6) {
    // byte j holds, from bit 0, the top 2 bits of: the even block's columns j and j + 16, the odd block's j and
    // j + 16. Both 128-bit lanes get the 16 bytes; a shift per 32-bit lane brings each lane's pair of bits to bits
    // 4-5 (the bits it pulls in from the next byte fall outside the mask).
    const __m256i top = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(high + p * 16)));
    const __m256i mask = _mm256_set1_epi8(0x30);
    even = _mm256_or_si256(even, _mm256_and_si256(_mm256_sllv_epi32(top, _mm256_setr_epi32(4, 4, 4, 4, 2, 2, 2, 2)),
                                                  mask));
    odd = _mm256_or_si256(odd, _mm256_and_si256(_mm256_srlv_epi32(top, _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2)),
                                                mask));
  }
}
#endif

// MT rows (xq: the first row's codes; xd, xs: its blocks' dx and sx; rows `in` codes and nb blocks apart) by NC
// column records (w: the first; records nb * Layout::bytes apart), into out (rows ldo apart). scratch: MT * nb floats
// for each column.
template <int BITS, int MT, int NC>
inline void lowbit_tile(const uint8_t* w, int64_t nb, const int8_t* xq, const float* xd, const float* xs, int64_t in,
                        float* out, int64_t ldo, const float* bias, float* scratch) {
  using L = Layout<BITS>;
  const int64_t record = nb * L::bytes;
  const auto high = [&](int c) { return w + c * record + nb * 16; };
  const auto steps = [&](int c) { return high(c) + nb * L::high; };
  float min_share[NC][MT];
  for (int c = 0; c < NC; ++c)
    column_scales<MT>(steps(c), L::minimums ? steps(c) + nb * 2 : nullptr, L::offset, nb, xd, xs,
                      scratch + c * MT * nb, min_share[c]);
#ifdef OZWELL_LOWBIT_AVX2
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[NC][MT];
  for (int c = 0; c < NC; ++c)
    for (int m = 0; m < MT; ++m) acc[c][m] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; b += 2) {
    for (int c = 0; c < NC; ++c) {
      // the record PREFETCH_BYTES ahead, a pair's share of it at a time, so that every line of it is asked for
      _mm_prefetch(reinterpret_cast<const char*>(w + c * record + b * L::bytes) + PREFETCH_BYTES, _MM_HINT_T0);
      __m256i even, odd;
      unpack_pair<BITS>(w + c * record, high(c), b / 2, even, odd);
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
        for (int j = 0; j < 32; ++j) {
          int32_t q = (pair[j] >> shift) & 0x0F;
          if (BITS == 6) q |= ((high(c)[(b / 2) * 16 + j % 16] >> ((b % 2) * 4 + (j / 16) * 2)) & 3) << 4;
          dot += q * xb[j];
        }
        acc += static_cast<float>(dot) * scratch[c * MT * nb + m * nb + b];
      }
      out[m * ldo + c] = acc + min_share[c][m] + (bias ? bias[c] : 0.f);
    }
#endif
}

// Rows [r, r + MT) by columns [c0, c1) (a multiple of NC).
template <int BITS, int MT, int NC>
inline void lowbit_rows(const uint8_t* w, int64_t nb, const Q8Rows& x, int64_t r, int64_t in, int64_t c0, int64_t c1,
                        float* out, int64_t out_features, const float* bias, float* scratch) {
  const int8_t* xq = x.q.data_ptr<int8_t>() + r * in;
  const float* xd = x.d.data_ptr<float>() + r * nb;
  const float* xs = x.s.data_ptr<float>() + r * nb;
  for (int64_t c = c0; c < c1; c += NC)
    lowbit_tile<BITS, MT, NC>(w + c * nb * Layout<BITS>::bytes, nb, xq, xd, xs, in, out + r * out_features + c,
                              out_features, bias ? bias + c : nullptr, scratch);
}

template <int BITS>
void lowbit_impl(const uint8_t* w, int64_t nb, const Q8Rows& xq, int64_t rows, int64_t in, float* op,
                 int64_t out_features, const float* bp) {
  split_for(out_features / 4, rows, 16, [&](int64_t p0, int64_t p1) {  // groups of 4 columns (ops_cpu.h)
    const int64_t c0 = p0 * 4, c1 = p1 * 4;
    std::vector<float> scratch(4 * nb * 4);
    // columns in chunks whose records stay in cache while every row tile passes over them
    constexpr int64_t chunk = 32;
    for (int64_t cc = c0; cc < c1; cc += chunk) {
      const int64_t ce = std::min(c1, cc + chunk);
      float* s = scratch.data();
      int64_t r = 0;
      for (; r + 4 <= rows; r += 4) lowbit_rows<BITS, 4, 2>(w, nb, xq, r, in, cc, ce, op, out_features, bp, s);
      if (rows - r == 3) lowbit_rows<BITS, 3, 2>(w, nb, xq, r, in, cc, ce, op, out_features, bp, s);
      if (rows - r == 2) lowbit_rows<BITS, 2, 2>(w, nb, xq, r, in, cc, ce, op, out_features, bp, s);
      // one row: 4 columns a tile for 4 bits, 2 for 6 (whose unpacking takes more registers; 4 spilled them)
      if (rows - r == 1) lowbit_rows<BITS, 1, BITS == 6 ? 2 : 4>(w, nb, xq, r, in, cc, ce, op, out_features, bp, s);
    }
  });
}

}  // namespace

// x [..., in] float32, records [out, in * 5 / 8] (4-bit) or [out, in * 13 / 16] (6-bit) uint8 (the layouts above;
// in a multiple of 64, out of 4), bias [out] or None -> [..., out] float32
at::Tensor lowbit_linear(const at::Tensor& x_in, const at::Tensor& records, const c10::optional<at::Tensor>& bias_in) {
  const int64_t in = x_in.size(-1), nb = in / QK, out_features = records.size(0);
  TORCH_CHECK(x_in.scalar_type() == at::kFloat && records.scalar_type() == at::kByte && records.dim() == 2 &&
                  records.is_contiguous() && in % 64 == 0 && out_features % 4 == 0 &&
                  (records.size(1) == nb * Layout<4>::bytes || records.size(1) == nb * Layout<6>::bytes),
              "lowbit_linear: float32 x [..., in] and 4-bit [out, in * 5 / 8] or 6-bit [out, in * 13 / 16] records "
              "(uint8; in a multiple of 64, out of 4)");
  const auto x = x_in.reshape({-1, in}).contiguous();
  const int64_t rows = x.size(0);
  const bool has_bias = bias_in.has_value() && bias_in->defined();
  const auto bias = has_bias ? bias_in->to(at::kFloat).contiguous() : at::Tensor();
  TORCH_CHECK(!has_bias || bias.numel() == out_features, "lowbit_linear: bias must be [out]");
  auto sizes = x_in.sizes().vec();
  sizes.back() = out_features;
  auto out = at::empty({rows, out_features}, x.options());
  if (rows == 0) return out.view(sizes);
  const Q8Rows xq = quantize_rows(x.data_ptr<float>(), rows, in);
  const uint8_t* w = records.data_ptr<uint8_t>();
  const float* bp = has_bias ? bias.data_ptr<float>() : nullptr;
  if (records.size(1) == nb * Layout<4>::bytes) {
    lowbit_impl<4>(w, nb, xq, rows, in, out.data_ptr<float>(), out_features, bp);
  } else {
    lowbit_impl<6>(w, nb, xq, rows, in, out.data_ptr<float>(), out_features, bp);
  }
  return out.view(sizes);
}

}  // namespace ozwell
