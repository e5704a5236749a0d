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

// MT rows (bf16, ldx apart) by the 16 columns of a converted pair; `cols` of them stored (16, or 8 for an odd last
// panel).
template <int MT>
inline void dot_tile(const uint16_t* x, int64_t ldx, const uint16_t* w, int64_t in, uint16_t* out, int64_t ldo,
                     const float* bias, const float* scale, int cols) {
  __m512 acc[MT];
  for (int m = 0; m < MT; ++m) acc[m] = _mm512_setzero_ps();
  for (int64_t kk = 0; kk < in / 2; ++kk) {
    const __m512bh wk = reinterpret_cast<__m512bh>(_mm512_loadu_si512(w + kk * 32));
    for (int m = 0; m < MT; ++m) {
      int32_t pair;
      std::memcpy(&pair, x + m * ldx + 2 * kk, sizeof pair);
      acc[m] = _mm512_dpbf16_ps(acc[m], reinterpret_cast<__m512bh>(_mm512_set1_epi32(pair)), wk);
    }
  }
  const __mmask16 mask = cols == 16 ? 0xFFFF : 0x00FF;
  const __m512 s = _mm512_maskz_loadu_ps(mask, scale);
  for (int m = 0; m < MT; ++m) {
    const __m512 r = bias != nullptr ? _mm512_fmadd_ps(acc[m], s, _mm512_maskz_loadu_ps(mask, bias))
                                     : _mm512_mul_ps(acc[m], s);
    uint16_t rounded[16];  // as float_bf16 rounds (ops_cpu.h), which vcvtneps2bf16 does not do for NaN
    float sums[16];
    _mm512_storeu_ps(sums, r);
    for (int c = 0; c < cols; ++c) rounded[c] = float_bf16(sums[c]);
    std::memcpy(out + m * ldo, rounded, cols * sizeof(uint16_t));
  }
}

}  // namespace

bool int8_bf16_linear(const at::Tensor& x, const int8_t* w, int64_t panels, const float* bias, const float* scale,
                      at::BFloat16* out_bf16) {
  const int64_t rows = x.size(0), in = x.size(1), out_features = panels * 8;
  if (rows < BF16_DOT_MIN_ROWS || in % 2 != 0 || x.scalar_type() != at::kBFloat16 || !x.is_contiguous()) return false;
  const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  auto* out = reinterpret_cast<uint16_t*>(out_bf16);
  split_for(panels, rows, 64, [&](int64_t p0, int64_t p1) {  // every part starts at an even panel (ops_cpu.h)
    std::vector<uint16_t> buffer(in * 16);
    for (int64_t p = p0; p < p1; p += 2) {
      const bool pair = p + 1 < p1;
      convert_pair(w + p * in * 8, pair ? w + (p + 1) * in * 8 : nullptr, in, buffer.data());
      const float* b = bias != nullptr ? bias + p * 8 : nullptr;
      const int cols = pair ? 16 : 8;
      uint16_t* o = out + p * 8;
      int64_t m = 0;
      for (; m + 8 <= rows; m += 8) dot_tile<8>(xp + m * in, in, buffer.data(), in, o + m * out_features, out_features, b, scale + p * 8, cols);
      for (; m + 4 <= rows; m += 4) dot_tile<4>(xp + m * in, in, buffer.data(), in, o + m * out_features, out_features, b, scale + p * 8, cols);
      for (; m < rows; ++m) dot_tile<1>(xp + m * in, in, buffer.data(), in, o + m * out_features, out_features, b, scale + p * 8, cols);
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
