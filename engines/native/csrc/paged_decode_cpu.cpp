// Decode attention that reads the paged KV cache in place, on a CPU (see engines/native/cpu_kernel.py).
//
// One query token per sequence. For each (sequence, KV head) pair, in parallel: the scores of the heads that
// share the KV head against every visible position, read row by row from the sequence's blocks; a softmax;
// then the values, weighted, read the same way. Nothing is gathered into a copy, so a step reads each
// sequence's context once, where gathering first read it, wrote it, and read it again.
//
// At 32 sequences of 512 tokens (gemma-3-270m: 4 heads on one KV head of 256) a layer's cache is 17 MB in bfloat16,
// read from memory, and the step is bound by how fast those reads come, so the loops are built around them:
// - each key row is read once for the 4 heads that share it, in vectors as wide as the registers (bfloat16 dot
//   products where the CPU has them), each sum ended by a tree of halves;
// - the values are summed a tile of rows at a time, 4 heads x 64 lanes (16 with AVX2) of sums held in
//   registers;
// - rows are asked for ahead of their use (the blocks of a sequence are not adjacent, and the hardware's
//   prefetcher stops at each block's end);
// - the softmax's exponentials run a vector at a time.
// Measured against the kernel before (one row and one head at a time, a scalar exp): 2.8 -> 1.2 ms a layer in
// bfloat16 (README: "Decode attention at long contexts").
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "ops_cpu.h"
#include "vec_cpu.h"

#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define OZWELL_BF16_DOT 1
#endif

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

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

// The rows of the cache one task reads: the offsets of its visible positions' rows, in elements. A key row is asked
// for `AHEAD` rows before it is scored: the rows of a block are adjacent, but a sequence's blocks are not.
template <typename T>
struct Rows {
  const T* keys;
  const T* values;
  const int64_t* offsets;
  int64_t n, dim;
  static constexpr int64_t AHEAD = 4;

  void before_scoring(int64_t i) const {
    if (i + AHEAD >= n) return;
    const char* p = reinterpret_cast<const char*>(keys + offsets[i + AHEAD]);
    for (int64_t b = 0; b < dim * static_cast<int64_t>(sizeof(T)); b += 64) __builtin_prefetch(p + b);
  }
};

// scores[h * n + i] = q[h] . keys[i], for H heads (q [H, dim], float): each row's lanes are read once for the H
// heads.
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

template <typename T>
void run(const at::Tensor& query, const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& tables,
         const at::Tensor& starts, const at::Tensor& lengths, int64_t block_size, double scale, at::Tensor& out) {
  const int64_t seqs = query.size(0), heads = query.size(1), dim = query.size(2);
  const int64_t kv_heads = k_cache.size(1), group = heads / kv_heads, width = tables.size(1);
  const T* q_ptr = query.data_ptr<T>();
  const T* k_ptr = k_cache.data_ptr<T>();
  const T* v_ptr = v_cache.data_ptr<T>();
  const int64_t* table_ptr = tables.data_ptr<int64_t>();
  const int64_t* start_ptr = starts.data_ptr<int64_t>();
  const int64_t* length_ptr = lengths.data_ptr<int64_t>();
  T* out_ptr = out.data_ptr<T>();
  const int64_t slot_stride = kv_heads * dim;  // k/v_cache [slots, kv_heads, dim], contiguous
  // Fewer (sequence, KV head) pairs than threads (one sequence of a model with one KV head, as gemma-3-270m):
  // the heads that share a KV head are split among the threads too, each part reading the K/V it needs.
  const int64_t pairs = seqs * kv_heads;
  const int64_t wanted =
      std::max<int64_t>(1, std::min<int64_t>(group, at::get_num_threads() / std::max<int64_t>(pairs, 1)));
  const int64_t part_heads = (group + wanted - 1) / wanted, parts = (group + part_heads - 1) / part_heads;
  parallel_for(0, pairs * parts, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> q(part_heads * dim), acc(part_heads * dim), scores;
    std::vector<int64_t> offsets;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t s = task / parts / kv_heads, g = task / parts % kv_heads, part = task % parts;
      const int64_t h0 = g * group + part * part_heads;  // this part's first head, and how many
      const int64_t hn = std::min<int64_t>(part_heads, group - part * part_heads);
      const int64_t first = std::max<int64_t>(start_ptr[s], 0);
      const int64_t last = std::min<int64_t>(length_ptr[s], width * block_size);
      const int64_t n = std::max<int64_t>(last - first, 0);
      scores.resize(hn * n);
      offsets.resize(n);
      const int64_t* table = table_ptr + s * width;
      for (int64_t pos = first, i = 0; pos < last;) {  // each visible position's row in the caches, block by block
        const int64_t offset = pos % block_size, run = std::min(block_size - offset, last - pos);
        const int64_t row = (table[pos / block_size] * block_size + offset) * slot_stride + g * dim;
        for (int64_t j = 0; j < run; ++j) offsets[i++] = row + j * slot_stride;
        pos += run;
      }
      const Rows<T> rows{k_ptr, v_ptr, offsets.data(), n, dim};
      const T* qs = q_ptr + (s * heads + h0) * dim;  // this part's heads' queries
#ifdef OZWELL_BF16_DOT
      if constexpr (std::is_same<T, at::BFloat16>::value) {
        four_at_a_time(hn, [&](int64_t h, auto H) {
          score_rows_bf16<decltype(H)::value>(qs + h * dim, static_cast<float>(scale), rows, scores.data() + h * n);
        });
      } else
#endif
      {
        for (int64_t i = 0; i < hn * dim; ++i) q[i] = static_cast<float>(qs[i]) * static_cast<float>(scale);
        four_at_a_time(hn, [&](int64_t h, auto H) {
          score_rows<decltype(H)::value>(q.data() + h * dim, rows, scores.data() + h * n);
        });
      }
      for (int64_t h = 0; h < hn; ++h) softmax(scores.data() + h * n, n);
      std::fill(acc.begin(), acc.end(), 0.f);
      four_at_a_time(hn, [&](int64_t h, auto H) {
        weigh_rows<decltype(H)::value>(scores.data() + h * n, rows, acc.data() + h * dim);
      });
      for (int64_t i = 0; i < hn * dim; ++i) out_ptr[(s * heads + h0) * dim + i] = static_cast<T>(acc[i]);
    }
  });
}

// query [seqs, heads, dim]; k/v_cache [slots, kv_heads, dim]; tables [seqs, blocks] (int64);
// starts, lengths [seqs] (int64): row s attends to positions starts[s] .. lengths[s]-1 of its table.
at::Tensor paged_decode(const at::Tensor& query, const at::Tensor& k_cache, const at::Tensor& v_cache,
                        const at::Tensor& tables, const at::Tensor& starts, const at::Tensor& lengths,
                        int64_t block_size, double scale) {
  TORCH_CHECK(query.device().is_cpu() && k_cache.device().is_cpu(), "paged_decode runs on the CPU");
  TORCH_CHECK(query.dim() == 3 && k_cache.dim() == 3 && v_cache.sizes() == k_cache.sizes(), "bad shapes");
  TORCH_CHECK(query.scalar_type() == k_cache.scalar_type() && k_cache.scalar_type() == v_cache.scalar_type(),
              "query and cache dtypes differ");
  TORCH_CHECK(query.size(1) % k_cache.size(1) == 0 && query.size(2) == k_cache.size(2), "heads do not match");
  TORCH_CHECK(tables.scalar_type() == at::kLong && starts.scalar_type() == at::kLong &&
                  lengths.scalar_type() == at::kLong, "tables, starts and lengths are int64");
  auto q = query.contiguous();
  auto k = k_cache.contiguous();
  auto v = v_cache.contiguous();
  auto t = tables.contiguous();
  auto st = starts.contiguous();
  auto ln = lengths.contiguous();
  auto out = at::empty_like(q);
  if (q.scalar_type() == at::kFloat) {
    run<float>(q, k, v, t, st, ln, block_size, scale, out);
  } else if (q.scalar_type() == at::kBFloat16) {
    run<at::BFloat16>(q, k, v, t, st, ln, block_size, scale, out);
  } else {
    TORCH_CHECK(false, "paged_decode: float32 or bfloat16 only");
  }
  return out;
}

}  // namespace ozwell

TORCH_LIBRARY(ozwell_cpu, m) {
  m.def("paged_decode(Tensor query, Tensor k_cache, Tensor v_cache, Tensor tables, Tensor starts, Tensor lengths, "
        "int block_size, float scale) -> Tensor");
  m.impl("paged_decode", c10::DispatchKey::CPU, &ozwell::paged_decode);
}
