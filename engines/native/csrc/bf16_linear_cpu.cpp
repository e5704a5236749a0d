// int8 weights times bfloat16 rows, in bfloat16 dot products, where the CPU has them (AVX-512 BF16).
//
// From a dozen rows up (a batch of decodes, a prefill chunk) a linear is bound by its multiplies, not by its read.
// There the float32 kernel (fused_cpu.cpp) widens each int8 weight to a float and runs 8-wide float FMAs, while a
// bfloat16 model's oneDNN linears run vdpbf16ps, which does twice the multiplies an instruction. So at 32 decodes an
// int8 gemma-3-270m ran at 0.72x its bfloat16 self (2-core AVX-512 EPYC). Here, for a bfloat16 model's rows (which
// are exactly bfloat16, so nothing is rounded that was not), each pair of panels (16 output columns) is converted
// once a call into bfloat16, interleaved as vdpbf16ps takes it (for each pair of input columns k, k + 1, the 16
// columns' two weights side by side, 64 bytes a pair), into a buffer that stays in cache while every row's tile
// passes over it; the sums run in float32, each column's scale and bias apply once at the end, and the result is
// rounded once to bfloat16. int8 weights are whole numbers in [-127, 127], which bfloat16 holds exactly, so the
// products are the float32 kernel's, summed in another order.
#include <ATen/ATen.h>

#include <cstring>
#include <vector>

#include "ops_cpu.h"

#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#define OZWELL_BF16_DOT 1
#endif

namespace ozwell {

// Below this many rows the read of the weight is the cost and the float32 kernel reads it faster (measured: see
// README, "int8 weights in bfloat16 dot products").
constexpr int64_t BF16_DOT_MIN_ROWS = 8;

#ifdef OZWELL_BF16_DOT
namespace {

// Panels p and p + 1 ([in, 8] int8 each; p1 null where p is the last, odd one) -> [in / 2][16 columns][2] bfloat16.
void convert_pair(const int8_t* p0, const int8_t* p1, int64_t in, uint16_t* dst) {
  const __m128i zero = _mm_setzero_si128();
  for (int64_t kk = 0; kk < in / 2; ++kk) {
    // 16 bytes a panel: columns 0-7 at k = 2kk, then at 2kk + 1; interleaved to (c0 k, c0 k+1, c1 k, ...)
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p0 + kk * 16));
    const __m128i b = p1 != nullptr ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(p1 + kk * 16)) : zero;
    const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_unpacklo_epi8(a, _mm_srli_si128(a, 8))));
    const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_unpacklo_epi8(b, _mm_srli_si128(b, 8))));
    _mm512_storeu_si512(dst + kk * 32, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo)));
  }
}

// MT rows (bf16, ldx apart) by NP converted pairs (16 columns each, `in` * 16 apart in w): one broadcast of a row's
// pair of inputs feeds NP products. `cols` columns of the last pair are stored (16, or 8 for an odd last panel).
// Each column's sum runs over k in order in one accumulator, so the result does not depend on NP or MT.
template <int MT, int NP>
inline void dot_tile(const uint16_t* x, int64_t ldx, const uint16_t* w, int64_t in, uint16_t* out, int64_t ldo,
                     const float* bias, const float* scale, int cols) {
  __m512 acc[NP][MT];
  for (int j = 0; j < NP; ++j)
    for (int m = 0; m < MT; ++m) acc[j][m] = _mm512_setzero_ps();
  for (int64_t kk = 0; kk < in / 2; ++kk) {
    __m512bh wk[NP];
    for (int j = 0; j < NP; ++j) wk[j] = reinterpret_cast<__m512bh>(_mm512_loadu_si512(w + j * in * 16 + kk * 32));
    for (int m = 0; m < MT; ++m) {
      int32_t pair;
      std::memcpy(&pair, x + m * ldx + 2 * kk, sizeof pair);
      const __m512bh xk = reinterpret_cast<__m512bh>(_mm512_set1_epi32(pair));
      for (int j = 0; j < NP; ++j) acc[j][m] = _mm512_dpbf16_ps(acc[j][m], xk, wk[j]);
    }
  }
  for (int j = 0; j < NP; ++j) {
    const int n = j + 1 < NP ? 16 : cols;
    const __mmask16 mask = n == 16 ? 0xFFFF : 0x00FF;
    const __m512 s = _mm512_maskz_loadu_ps(mask, scale + 16 * j);
    const __m512 b = bias != nullptr ? _mm512_maskz_loadu_ps(mask, bias + 16 * j) : _mm512_setzero_ps();
    for (int m = 0; m < MT; ++m) {
      uint16_t rounded[16];  // as float_bf16 rounds (ops_cpu.h), which vcvtneps2bf16 does not do for NaN
      float sums[16];
      _mm512_storeu_ps(sums, _mm512_fmadd_ps(acc[j][m], s, b));
      for (int c = 0; c < n; ++c) rounded[c] = float_bf16(sums[c]);
      std::memcpy(out + m * ldo + 16 * j, rounded, n * sizeof(uint16_t));
    }
  }
}

// Rows [0, rows) by NP converted pairs, in tiles of 8, 4 and 1 rows.
template <int NP>
void dot_rows(const uint16_t* xp, int64_t rows, int64_t in, const uint16_t* w, uint16_t* o, int64_t ldo,
              const float* b, const float* s, int cols) {
  int64_t m = 0;
  for (; m + 8 <= rows; m += 8) dot_tile<8, NP>(xp + m * in, in, w, in, o + m * ldo, ldo, b, s, cols);
  for (; m + 4 <= rows; m += 4) dot_tile<4, NP>(xp + m * in, in, w, in, o + m * ldo, ldo, b, s, cols);
  for (; m < rows; ++m) dot_tile<1, NP>(xp + m * in, in, w, in, o + m * ldo, ldo, b, s, cols);
}

}  // namespace

bool int8_bf16_linear(const at::Tensor& x, const int8_t* w, int64_t panels, const float* bias, const float* scale,
                      at::BFloat16* out_bf16) {
  const int64_t rows = x.size(0), in = x.size(1), out_features = panels * 8;
  if (rows < BF16_DOT_MIN_ROWS || in % 2 != 0 || x.scalar_type() != at::kBFloat16 || !x.is_contiguous()) return false;
  const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  auto* out = reinterpret_cast<uint16_t*>(out_bf16);
  split_for(panels, rows, 64, [&](int64_t p0, int64_t p1) {  // every part starts at an even panel (ops_cpu.h)
    std::vector<uint16_t> buffer(in * 32);
    for (int64_t p = p0; p < p1;) {
      const float* b = bias != nullptr ? bias + p * 8 : nullptr;
      uint16_t* o = out + p * 8;
      if (p + 4 <= p1) {  // two pairs: 32 columns
        convert_pair(w + p * in * 8, w + (p + 1) * in * 8, in, buffer.data());
        convert_pair(w + (p + 2) * in * 8, w + (p + 3) * in * 8, in, buffer.data() + in * 16);
        dot_rows<2>(xp, rows, in, buffer.data(), o, out_features, b, scale + p * 8, 16);
        p += 4;
      } else {
        const bool pair = p + 1 < p1;
        convert_pair(w + p * in * 8, pair ? w + (p + 1) * in * 8 : nullptr, in, buffer.data());
        dot_rows<1>(xp, rows, in, buffer.data(), o, out_features, b, scale + p * 8, pair ? 16 : 8);
        p += pair ? 2 : 1;
      }
    }
  });
  return true;
}
#else
bool int8_bf16_linear(const at::Tensor&, const int8_t*, int64_t, const float*, const float*, at::BFloat16*) {
  return false;
}
#endif

}  // namespace ozwell
