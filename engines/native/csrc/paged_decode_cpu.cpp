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
// The cache may hold another dtype than the query (`kv_cache_dtype`, engines/native/kv_cache.py): bfloat16 under a
// float32 model, or int8 with a float32 scale per row; its rows are widened in registers (paged_rows_cpu.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "ops_cpu.h"
#include "paged_rows_cpu.h"

#include <algorithm>
#include <type_traits>
#include <vector>

namespace ozwell {

// Q: the query's (and the output's) dtype, float or bfloat16; C: the cache's, float, bfloat16 or int8 (with its
// scales [slots, kv_heads]).
template <typename Q, typename C>
void run(const at::Tensor& query, const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& tables,
         const at::Tensor& starts, const at::Tensor& lengths, int64_t block_size, double scale, at::Tensor& out,
         const float* k_scale_ptr, const float* v_scale_ptr) {
  constexpr bool int8 = std::is_same<C, int8_t>::value;
  const int64_t seqs = query.size(0), heads = query.size(1), dim = query.size(2);
  const int64_t kv_heads = k_cache.size(1), group = heads / kv_heads, width = tables.size(1);
  const Q* q_ptr = query.data_ptr<Q>();
  const C* k_ptr = k_cache.data_ptr<C>();
  const C* v_ptr = v_cache.data_ptr<C>();
  const int64_t* table_ptr = tables.data_ptr<int64_t>();
  const int64_t* start_ptr = starts.data_ptr<int64_t>();
  const int64_t* length_ptr = lengths.data_ptr<int64_t>();
  Q* out_ptr = out.data_ptr<Q>();
  const int64_t slot_stride = kv_heads * dim;  // k/v_cache [slots, kv_heads, dim], contiguous
  // Fewer (sequence, KV head) pairs than threads (one sequence of a model with one KV head, as gemma-3-270m):
  // the heads that share a KV head are split among the threads too, each part reading the K/V it needs.
  const int64_t pairs = seqs * kv_heads;
  const int64_t wanted =
      std::max<int64_t>(1, std::min<int64_t>(group, at::get_num_threads() / std::max<int64_t>(pairs, 1)));
  const int64_t part_heads = (group + wanted - 1) / wanted, parts = (group + part_heads - 1) / part_heads;
  parallel_for(0, pairs * parts, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> q(part_heads * dim), acc(part_heads * dim), scores, k_scales, v_scales;
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
      if (int8) k_scales.resize(n), v_scales.resize(n);
      const int64_t* table = table_ptr + s * width;
      for (int64_t pos = first, i = 0; pos < last;) {  // each visible position's row in the caches, block by block
        const int64_t offset = pos % block_size, run = std::min(block_size - offset, last - pos);
        const int64_t slot = table[pos / block_size] * block_size + offset;
        for (int64_t j = 0; j < run; ++j, ++i) {
          offsets[i] = (slot + j) * slot_stride + g * dim;
          if (int8) {
            k_scales[i] = k_scale_ptr[(slot + j) * kv_heads + g];
            v_scales[i] = v_scale_ptr[(slot + j) * kv_heads + g];
          }
        }
        pos += run;
      }
      const Rows<C> rows{k_ptr, v_ptr, offsets.data(), n, dim, int8 ? k_scales.data() : nullptr};
      const Q* qs = q_ptr + (s * heads + h0) * dim;  // this part's heads' queries
#ifdef OZWELL_BF16_DOT
      if constexpr (std::is_same<Q, at::BFloat16>::value && std::is_same<C, at::BFloat16>::value) {
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
      if (int8)  // each value row's scale, on its weight
        for (int64_t h = 0; h < hn; ++h)
          for (int64_t i = 0; i < n; ++i) scores[h * n + i] *= v_scales[i];
      std::fill(acc.begin(), acc.end(), 0.f);
      four_at_a_time(hn, [&](int64_t h, auto H) {
        weigh_rows<decltype(H)::value>(scores.data() + h * n, rows, acc.data() + h * dim);
      });
      for (int64_t i = 0; i < hn * dim; ++i) out_ptr[(s * heads + h0) * dim + i] = static_cast<Q>(acc[i]);
    }
  });
}

// query [seqs, heads, dim] float32 or bfloat16; k/v_cache [slots, kv_heads, dim] in the query's dtype, bfloat16, or
// int8 with k/v_scales [slots, kv_heads] float32; tables [seqs, blocks] (int64); starts, lengths [seqs] (int64):
// row s attends to positions starts[s] .. lengths[s]-1 of its table. The result is in the query's dtype.
at::Tensor paged_decode(const at::Tensor& query, const at::Tensor& k_cache, const at::Tensor& v_cache,
                        const at::Tensor& tables, const at::Tensor& starts, const at::Tensor& lengths,
                        int64_t block_size, double scale, const c10::optional<at::Tensor>& k_scales,
                        const c10::optional<at::Tensor>& v_scales) {
  TORCH_CHECK(query.device().is_cpu() && k_cache.device().is_cpu(), "paged_decode runs on the CPU");
  TORCH_CHECK(query.dim() == 3 && k_cache.dim() == 3 && v_cache.sizes() == k_cache.sizes(), "bad shapes");
  TORCH_CHECK(k_cache.scalar_type() == v_cache.scalar_type(), "k and v cache dtypes differ");
  TORCH_CHECK(query.size(1) % k_cache.size(1) == 0 && query.size(2) == k_cache.size(2), "heads do not match");
  TORCH_CHECK(tables.scalar_type() == at::kLong && starts.scalar_type() == at::kLong &&
                  lengths.scalar_type() == at::kLong, "tables, starts and lengths are int64");
  const auto qt = query.scalar_type(), ct = k_cache.scalar_type();
  const bool int8 = ct == at::kChar, has_scales = k_scales.has_value() && k_scales->defined();
  TORCH_CHECK(int8 == has_scales && has_scales == (v_scales.has_value() && v_scales->defined()),
              "an int8 cache takes k and v scales, another none");
  at::Tensor ks, vs;
  if (int8) {
    ks = k_scales->contiguous();
    vs = v_scales->contiguous();
    TORCH_CHECK(ks.scalar_type() == at::kFloat && vs.scalar_type() == at::kFloat && ks.dim() == 2 &&
                    ks.size(0) == k_cache.size(0) && ks.size(1) == k_cache.size(1) && vs.sizes() == ks.sizes(),
                "scales must be float32 [slots, kv_heads]");
  }
  auto q = query.contiguous();
  auto k = k_cache.contiguous();
  auto v = v_cache.contiguous();
  auto t = tables.contiguous();
  auto st = starts.contiguous();
  auto ln = lengths.contiguous();
  auto out = at::empty_like(q);
  const float* kp = int8 ? ks.data_ptr<float>() : nullptr;
  const float* vp = int8 ? vs.data_ptr<float>() : nullptr;
  if (qt == at::kFloat && ct == at::kFloat) {
    run<float, float>(q, k, v, t, st, ln, block_size, scale, out, kp, vp);
  } else if (qt == at::kBFloat16 && ct == at::kBFloat16) {
    run<at::BFloat16, at::BFloat16>(q, k, v, t, st, ln, block_size, scale, out, kp, vp);
  } else if (qt == at::kFloat && ct == at::kBFloat16) {
    run<float, at::BFloat16>(q, k, v, t, st, ln, block_size, scale, out, kp, vp);
  } else if (qt == at::kFloat && int8) {
    run<float, int8_t>(q, k, v, t, st, ln, block_size, scale, out, kp, vp);
  } else if (qt == at::kBFloat16 && int8) {
    run<at::BFloat16, int8_t>(q, k, v, t, st, ln, block_size, scale, out, kp, vp);
  } else {
    TORCH_CHECK(false, "paged_decode: a float32 or bfloat16 query, and a cache in its dtype, bfloat16 or int8");
  }
  return out;
}

}  // namespace ozwell

TORCH_LIBRARY(ozwell_cpu, m) {
  m.def("paged_decode(Tensor query, Tensor k_cache, Tensor v_cache, Tensor tables, Tensor starts, Tensor lengths, "
        "int block_size, float scale, Tensor? k_scales=None, Tensor? v_scales=None) -> Tensor");
  m.impl("paged_decode", c10::DispatchKey::CPU, &ozwell::paged_decode);
}
