// The inner loops of the CPU decode-attention kernel (paged_decode_cpu.cpp): one task's scores against its visible
// key rows, and its values weighed, read in place from the paged cache.
//
// The cache's rows are float32, bfloat16 or int8 (`kv_cache_dtype`, engines/native/kv_cache.py), widened to float32
// in registers as they are loaded (vec_cpu.h's vload), never into a copy. An int8 row carries one scale (its
// absmax / 127): a key's applies to its score once the dot product is summed, a value's to its softmax weight
// before the weighing, so the loops themselves are the float32 ones.
#pragma once

#include "vec_cpu.h"

#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define OZWELL_BF16_DOT 1
#endif

#include <algorithm>
#include <cstring>
#include <type_traits>

namespace ozwell {

// f(h, std::integral_constant<int, H>) for the heads h .. h + H - 1 of `heads`, 4 at a time: the kernels below keep
// H heads' sums in registers.
template <typename F>
inline void four_at_a_time(int64_t heads, const F& f) {
  for (int64_t h = 0; h < heads; h += 4) {
    switch (std::min<int64_t>(4, heads - h)) {
      case 4: f(h, std::integral_constant<int, 4>{}); break;
      case 3: f(h, std::integral_constant<int, 3>{}); break;
      case 2: f(h, std::integral_constant<int, 2>{}); break;
      default: f(h, std::integral_constant<int, 1>{});
    }
  }
}

// The rows of the cache one task reads: the offsets of its visible positions' rows, in elements (and, in an int8
// cache, each row's key scale). A key row is asked for `AHEAD` rows before it is scored: the rows of a block are
// adjacent, but a sequence's blocks are not.
template <typename T>
struct Rows {
  const T* keys;
  const T* values;
  const int64_t* offsets;
  int64_t n, dim;
  const float* key_scales;  // [n] in an int8 cache, else null
  static constexpr int64_t AHEAD = 4;

  void before_scoring(int64_t i) const {
    if (i + AHEAD >= n) return;
    const char* p = reinterpret_cast<const char*>(keys + offsets[i + AHEAD]);
    for (int64_t b = 0; b < dim * static_cast<int64_t>(sizeof(T)); b += 64) __builtin_prefetch(p + b);
  }
};

// scores[h * n + i] = q[h] . keys[i], for H heads (q [H, dim], float): each row's lanes are read once for the H
// heads (an int8 row's sums times its scale).
template <int H, typename T>
void score_rows(const float* q, const Rows<T>& rows, float* scores) {
  const int64_t n = rows.n, dim = rows.dim, whole = dim / LANES * LANES;
  for (int64_t i = 0; i < n; ++i) {
    rows.before_scoring(i);
    const T* k = rows.keys + rows.offsets[i];
    vfloat acc[H];
    for (int h = 0; h < H; ++h) acc[h] = vfloat{};
    for (int64_t d = 0; d < whole; d += LANES) {
      const vfloat kd = vload(k + d);
      for (int h = 0; h < H; ++h) acc[h] += vload(q + h * dim + d) * kd;
    }
    for (int h = 0; h < H; ++h) {
      float sum = lane_sum(acc[h]);
      for (int64_t d = whole; d < dim; ++d) sum += q[h * dim + d] * scalar(k[d]);
      if constexpr (std::is_same<T, int8_t>::value) sum *= rows.key_scales[i];
      scores[h * n + i] = sum;
    }
  }
}

#ifdef OZWELL_BF16_DOT
// score_rows for a bfloat16 query and cache, in bfloat16 dot products (32 products an instruction, each exact in
// float32, summed in float32): q [H, dim] bfloat16 as the model gave it, the scale applied to each sum.
template <int H>
void score_rows_bf16(const at::BFloat16* q, float scale, const Rows<at::BFloat16>& rows, float* scores) {
  const int64_t n = rows.n, dim = rows.dim, whole = dim / 32 * 32;
  for (int64_t i = 0; i < n; ++i) {
    rows.before_scoring(i);
    const at::BFloat16* k = rows.keys + rows.offsets[i];
    __m512 acc[H];
    for (int h = 0; h < H; ++h) acc[h] = _mm512_setzero_ps();
    for (int64_t d = 0; d < whole; d += 32) {
      const __m512bh kd = reinterpret_cast<__m512bh>(_mm512_loadu_si512(k + d));
      for (int h = 0; h < H; ++h)
        acc[h] = _mm512_dpbf16_ps(acc[h], reinterpret_cast<__m512bh>(_mm512_loadu_si512(q + h * dim + d)), kd);
    }
    for (int h = 0; h < H; ++h) {
      float sum = _mm512_reduce_add_ps(acc[h]);
      for (int64_t d = whole; d < dim; ++d) sum += bf16_float(q[h * dim + d].x) * bf16_float(k[d].x);
      scores[h * n + i] = sum * scale;
    }
  }
}
#endif

// out[h][d .. d + 16G) += sum over rows i0 .. i0 + in of weights[h * n + i] * values[i][d ..]: H x G vectors of sums
// stay in registers across the rows, and the same lanes of the next tile's rows (`next`, `next_n`) are asked for.
template <int H, int G, typename T>
inline void weigh_lanes(const float* weights, const Rows<T>& rows, int64_t i0, int64_t in, int64_t d, float* out,
                        const int64_t* next, int64_t next_n) {
  const int64_t n = rows.n, dim = rows.dim;
  vfloat acc[H][G];
  for (int h = 0; h < H; ++h)
    for (int j = 0; j < G; ++j) acc[h][j] = vload(out + h * dim + d + j * LANES);
  for (int64_t i = i0; i < i0 + in; ++i) {
    if (i - i0 < next_n) {
      const char* p = reinterpret_cast<const char*>(rows.values + next[i - i0] + d);
      for (int64_t b = 0; b < G * LANES * static_cast<int64_t>(sizeof(T)); b += 64) __builtin_prefetch(p + b, 0, 2);
    }
    const T* v = rows.values + rows.offsets[i] + d;
    vfloat vd[G];
    for (int j = 0; j < G; ++j) vd[j] = vload(v + j * LANES);
    for (int h = 0; h < H; ++h) {
      const float w = weights[h * n + i];
      for (int j = 0; j < G; ++j) acc[h][j] += w * vd[j];
    }
  }
  for (int h = 0; h < H; ++h)
    for (int j = 0; j < G; ++j) std::memcpy(out + h * dim + d + j * LANES, &acc[h][j], sizeof(vfloat));
}

// out[h] += sum over i of weights[h * n + i] * values[i], for H heads (out [H, dim], float), a tile of rows at a
// time: the tile stays in the L1 cache while G vectors at a time of each of its rows are summed, and the next tile's
// rows are asked into L2 meanwhile, a few lines a row (asked for all at once, they stalled the loop: 12-16% slower;
// into L1, they pushed out the tile in use: 10-13% slower).
template <int H, typename T>
void weigh_rows(const float* weights, const Rows<T>& rows, float* out) {
  constexpr int64_t TILE = 16;
  const int64_t n = rows.n, dim = rows.dim;
  constexpr int G = LANES == 16 ? 4 : 2;  // vectors of lanes a row: 64 (AVX-512) or 16 (AVX2) lanes of sums a head
  const int64_t whole = dim / LANES * LANES, wide = dim / (G * LANES) * (G * LANES);
  for (int64_t i0 = 0; i0 < n; i0 += TILE) {
    const int64_t in = std::min(TILE, n - i0);
    const int64_t next_n = std::max<int64_t>(0, std::min(TILE, n - i0 - TILE));
    const int64_t* next = next_n > 0 ? rows.offsets + i0 + TILE : nullptr;
    for (int64_t d = 0; d < wide; d += G * LANES) weigh_lanes<H, G>(weights, rows, i0, in, d, out, next, next_n);
    for (int64_t d = wide; d < whole; d += LANES) weigh_lanes<H, 1>(weights, rows, i0, in, d, out, next, next_n);
    for (int64_t d = whole; d < dim; ++d)
      for (int64_t i = i0; i < i0 + in; ++i)
        for (int h = 0; h < H; ++h) out[h * dim + d] += weights[h * n + i] * scalar(rows.values[rows.offsets[i] + d]);
  }
}

}  // namespace ozwell
