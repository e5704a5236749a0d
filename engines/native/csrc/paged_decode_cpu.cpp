// Decode attention that reads the paged KV cache in place, on a CPU (see engines/native/cpu_kernel.py).
//
// One query token per sequence. For each (sequence, KV head) pair, in parallel: the scores of the heads that
// share the KV head against every visible position, read slot by slot from the sequence's blocks; a softmax;
// then the values, weighted, read the same way. Nothing is gathered into a copy, so a step reads each
// sequence's context once, where gathering first read it, wrote it, and read it again.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "ops_cpu.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace ozwell {

template <typename T>
inline float dot(const float* q, const T* k, int64_t dim) {
  float acc = 0.f;
#pragma omp simd reduction(+ : acc)
  for (int64_t d = 0; d < dim; ++d) acc += q[d] * static_cast<float>(k[d]);
  return acc;
}

template <typename T>
inline void axpy(float w, const T* v, float* out, int64_t dim) {
#pragma omp simd
  for (int64_t d = 0; d < dim; ++d) out[d] += w * static_cast<float>(v[d]);
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
  const int64_t wanted = std::max<int64_t>(1, std::min<int64_t>(group, at::get_num_threads() / std::max<int64_t>(pairs, 1)));
  const int64_t part_heads = (group + wanted - 1) / wanted, parts = (group + part_heads - 1) / part_heads;
  parallel_for(0, pairs * parts, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> q(part_heads * dim), acc(part_heads * dim), scores;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t s = task / parts / kv_heads, g = task / parts % kv_heads, part = task % parts;
      const int64_t h0 = g * group + part * part_heads;  // this part's first head, and how many
      const int64_t hn = std::min<int64_t>(part_heads, group - part * part_heads);
      const int64_t first = std::max<int64_t>(start_ptr[s], 0);
      const int64_t last = std::min<int64_t>(length_ptr[s], width * block_size);
      const int64_t n = std::max<int64_t>(last - first, 0);
      for (int64_t h = 0; h < hn; ++h)
        for (int64_t d = 0; d < dim; ++d)
          q[h * dim + d] = static_cast<float>(q_ptr[(s * heads + h0 + h) * dim + d]) * static_cast<float>(scale);
      scores.assign(hn * n, 0.f);
      const int64_t* table = table_ptr + s * width;
      for (int64_t pos = first; pos < last;) {  // block by block: a block's slots are contiguous
        const int64_t offset = pos % block_size, run = std::min(block_size - offset, last - pos);
        const T* k = k_ptr + (table[pos / block_size] * block_size + offset) * slot_stride + g * dim;
        for (int64_t i = 0; i < run; ++i, k += slot_stride)
          for (int64_t h = 0; h < hn; ++h) scores[h * n + pos - first + i] = dot(q.data() + h * dim, k, dim);
        pos += run;
      }
      for (int64_t h = 0; h < hn; ++h) {
        float* row = scores.data() + h * n;
        float top = -std::numeric_limits<float>::infinity();
        for (int64_t p = 0; p < n; ++p) top = std::max(top, row[p]);
        float sum = 0.f;
        for (int64_t p = 0; p < n; ++p) {
          row[p] = std::exp(row[p] - top);
          sum += row[p];
        }
        const float inv = sum > 0.f ? 1.f / sum : 0.f;
        for (int64_t p = 0; p < n; ++p) row[p] *= inv;
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t pos = first; pos < last;) {
        const int64_t offset = pos % block_size, run = std::min(block_size - offset, last - pos);
        const T* v = v_ptr + (table[pos / block_size] * block_size + offset) * slot_stride + g * dim;
        for (int64_t i = 0; i < run; ++i, v += slot_stride)
          for (int64_t h = 0; h < hn; ++h) axpy(scores[h * n + pos - first + i], v, acc.data() + h * dim, dim);
        pos += run;
      }
      for (int64_t h = 0; h < hn; ++h)
        for (int64_t d = 0; d < dim; ++d)
          out_ptr[(s * heads + h0 + h) * dim + d] = static_cast<T>(acc[h * dim + d]);
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
