// Float vectors for the CPU ops (paged_decode_cpu.cpp): loads from float32, bfloat16 and int8, the sum of the lanes,
// e^x and a softmax, a vector at a time.
#pragma once

#include <ATen/ATen.h>

#include "ops_cpu.h"

#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

// Vectors wider than the target's own registers passed between inline functions: GCC warns that their ABI differs
// (it does not matter here: nothing crosses a library's boundary)
#pragma GCC diagnostic ignored "-Wpsabi"

namespace ozwell {

// A vector of floats as wide as the CPU's registers: 16 with AVX-512, else 8 (AVX2's registers, or two SSE ones).
// GCC's vector extensions, so one source serves every x86 level the extension is built for. (Vectors of 16 on AVX2,
// two registers each, left the weighing's sums no registers: the kernel ran 3x slower than with 8.)
#ifdef __AVX512F__
#define OZWELL_LANES 16
#else
#define OZWELL_LANES 8
#endif
typedef float vfloat __attribute__((vector_size(OZWELL_LANES * 4)));
typedef uint16_t vhalf __attribute__((vector_size(OZWELL_LANES * 2)));
typedef uint32_t vword __attribute__((vector_size(OZWELL_LANES * 4)));
typedef int32_t vint __attribute__((vector_size(OZWELL_LANES * 4)));
typedef int8_t vbyte __attribute__((vector_size(OZWELL_LANES)));
constexpr int64_t LANES = OZWELL_LANES;

inline vfloat vload(const float* p) {
  vfloat v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline vfloat vload(const at::BFloat16* p) {  // bfloat16 -> float is a shift of its bits
#ifdef __AVX512F__
  // (GCC widens a 16-lane vector of halves through two 8-lane ones: 5 instructions where 2 do)
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return reinterpret_cast<vfloat>(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
#else
  vhalf h;
  std::memcpy(&h, p, sizeof h);
  return reinterpret_cast<vfloat>(__builtin_convertvector(h, vword) << 16);
#endif
}
inline vfloat vload(const int8_t* p) {  // an int8 KV cache's row: whole numbers in [-127, 127], exact as floats
#ifdef __AVX512F__
  return reinterpret_cast<vfloat>(
      _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))));
#else
  vbyte b;
  std::memcpy(&b, p, sizeof b);
  return __builtin_convertvector(b, vfloat);
#endif
}
inline float scalar(float x) { return x; }
inline float scalar(at::BFloat16 x) { return bf16_float(x.x); }
inline float scalar(int8_t x) { return static_cast<float>(x); }

// the sum of a vector's lanes, as a tree of halves (a reduction loop over them sums one lane after another)
inline float lane_sum(vfloat v) {
  typedef float quarter_t __attribute__((vector_size(16)));
#if OZWELL_LANES == 16
  typedef float half_t __attribute__((vector_size(32)));
  half_t lo, hi;
  std::memcpy(&lo, &v, sizeof lo);
  std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof lo, sizeof hi);
  const half_t h = lo + hi;
#else
  const vfloat h = v;
#endif
  quarter_t a, b;
  std::memcpy(&a, &h, sizeof a);
  std::memcpy(&b, reinterpret_cast<const char*>(&h) + sizeof a, sizeof b);
  const quarter_t q = a + b;
  return (q[0] + q[2]) + (q[1] + q[3]);
}

// e^x, a vector at a time, for x <= 0 (a score less the row's greatest): e^x = 2^k e^r with k = x / ln 2 rounded
// and |r| <= ln 2 / 2, e^r by a polynomial of degree 7 (as Cephes' expf), 2^k built in the float's exponent bits.
// Within 2 ulp of std::exp (1 ulp measured over [-87, 0]); below -87 (e^x < 2^-125, nothing beside a sum of at
// least 1) it gives e^-87.
inline vfloat vexp(vfloat x) {
  x = x < -87.f ? vfloat{} - 87.f : x;
  const vfloat round = vfloat{} + 12582912.f;  // 1.5 * 2^23: adding it rounds to a whole number
  const vfloat k = (x * 1.44269504f + round) - round;
  const vfloat r = (x - k * 0.693359375f) - k * -2.12194440e-4f;
  vfloat p = vfloat{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  const vint bits = (__builtin_convertvector(k, vint) + 127) << 23;
  return p * reinterpret_cast<vfloat>(bits);
}

// row[0 .. n) <- its softmax
inline void softmax(float* row, int64_t n) {
  const int64_t whole = n / LANES * LANES;
  float top = -std::numeric_limits<float>::infinity();
  if (whole > 0) {
    vfloat m = vload(row);
    for (int64_t p = LANES; p < whole; p += LANES) {
      const vfloat v = vload(row + p);
      m = v > m ? v : m;
    }
    for (int l = 0; l < LANES; ++l) top = std::max(top, m[l]);
  }
  for (int64_t p = whole; p < n; ++p) top = std::max(top, row[p]);
  vfloat sums{};
  for (int64_t p = 0; p < whole; p += LANES) {
    const vfloat e = vexp(vload(row + p) - top);
    std::memcpy(row + p, &e, sizeof e);
    sums += e;
  }
  float sum = lane_sum(sums);
  for (int64_t p = whole; p < n; ++p) {
    row[p] = std::exp(row[p] - top);
    sum += row[p];
  }
  const float inv = sum > 0.f ? 1.f / sum : 0.f;
  for (int64_t p = 0; p < n; ++p) row[p] *= inv;
}

}  // namespace ozwell
