// The CPU ops that one decode layer (decode_layer_cpu.cpp) calls directly, without the dispatcher:
// defined in fused_cpu.cpp, lowbit_linear_cpu.cpp and paged_decode_cpu.cpp, registered there as torch.ops.ozwell_cpu.*.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <tuple>

namespace ozwell {

// bfloat16 <-> float as at::BFloat16 converts (round to nearest even, NaN to 0x7FC0), in plain integer arithmetic
// that the compiler vectorises (at::BFloat16's own, with its branch, it does not: act_mul on 32 rows of 2048
// bfloat16 took 336 us against 41 in float32).
inline float bf16_float(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
inline uint16_t float_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return (bits & 0x7FFFFFFFu) > 0x7F800000u ? uint16_t{0x7FC0}
                                            : static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

// x [..., n] as rows [rows, n] whose elements are adjacent: a view where x's rows are evenly spaced (a narrow of a
// joined projection's output), else a copy.
inline at::Tensor as_rows(const at::Tensor& x, int64_t n) {
  auto rows = x.reshape({-1, n});
  return rows.stride(1) == 1 ? rows : rows.contiguous();
}

// Runs call(ctx, part) for parts 0..parts-1 at once, one a thread, on the pool of thread_pool_cpu.cpp (whose workers
// spin between loops, where OpenMP's sleep); serially inside a loop of the pool's or OpenMP's.
void parallel_run(int64_t parts, void (*call)(const void*, int64_t), const void* ctx);

// at::parallel_for's contract and split, on that pool: f(b, e) over [begin, end) in at most at::get_num_threads()
// parts of at least `grain` (the last may be shorter), each part one thread's.
template <typename F>
inline void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& f) {
  const int64_t range = end - begin;
  if (range <= 0) return;
  const int64_t parts = std::min<int64_t>(at::get_num_threads(), (range + std::max<int64_t>(grain, 1) - 1) /
                                                                      std::max<int64_t>(grain, 1));
  if (parts <= 1) {
    f(begin, end);
    return;
  }
  struct Loop {
    const F* f;
    int64_t begin, end, chunk;
  } loop{&f, begin, end, (range + parts - 1) / parts};
  parallel_run(parts, [](const void* ctx, int64_t part) {
    const auto* l = static_cast<const Loop*>(ctx);
    const int64_t b = l->begin + part * l->chunk;
    if (b < l->end) (*l->f)(b, std::min(l->end, b + l->chunk));
  }, &loop);
}

// f(begin, end) over [0, n), the output units (panels, groups of columns) of a linear of `rows` rows, split among
// the threads.
// - Up to 8 rows the read of the weight is the cost, and each thread reads one long stretch of it: an even split
//   (pieces claimed as below measured 2% slower at one row).
// - Beyond, compute is the cost. Pieces of at most `piece` units (and about 8 a thread) are claimed by the threads
//   one after another, so that a thread slowed by something else on its core (the server's event loop, a client)
//   leaves the rest to the others instead of keeping them waiting at the end. gemma-3-270m's decode step at 32 rows,
//   int8: 7% faster; 25% with a Python thread busy 0.5 ms in every 5.5 ms (an even split: 228 ms, claimed: 183).
// Every part starts at an even unit, so the kernels pair the same panels however the threads split them: a column's
// result does not depend on the number of threads.
template <typename F>
inline void split_for(int64_t n, int64_t rows, int64_t piece, const F& f) {
  const int64_t threads = at::get_num_threads(), pairs = (n + 1) / 2;
  piece = std::max<int64_t>(1, std::min(piece / 2, (pairs + 8 * threads - 1) / (8 * threads)));  // in pairs
  const int64_t pieces = (pairs + piece - 1) / piece;
  if (rows <= 8 || threads <= 1 || pieces <= 1 || at::in_parallel_region()) {
    parallel_for(0, pairs, 1, [&](int64_t begin, int64_t end) { f(2 * begin, std::min(n, 2 * end)); });
    return;
  }
  std::atomic<int64_t> next{0};
  parallel_for(0, std::min(threads, pieces), 1, [&](int64_t, int64_t) {
    for (int64_t i = next.fetch_add(1); i < pieces; i = next.fetch_add(1))
      f(2 * i * piece, std::min(n, 2 * (i + 1) * piece));
  });
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps, bool gemma);
std::tuple<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& residual, const at::Tensor& x,
                                                const c10::optional<at::Tensor>& w_x,
                                                const c10::optional<at::Tensor>& w_out, double eps, bool gemma);
std::tuple<at::Tensor, at::Tensor> qk_norm_rope(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos,
                                                const at::Tensor& sin, const c10::optional<at::Tensor>& q_w,
                                                const c10::optional<at::Tensor>& k_w, double eps, bool gemma,
                                                int64_t dim);
at::Tensor act_mul(const at::Tensor& gate, const at::Tensor& up, int64_t act);
// x [..., in] float32 or bfloat16 -> [..., out] in x's dtype (fused_cpu.cpp)
at::Tensor blocked_linear(const at::Tensor& x, const at::Tensor& blocked, const c10::optional<at::Tensor>& bias,
                          const c10::optional<at::Tensor>& scales);
// x [rows, in] bfloat16 times an int8 blocked weight [panels, in, 8] with its scales [panels * 8] and bias (or
// null) -> out [rows, panels * 8] bfloat16 (rounded once), in bfloat16 dot products (bf16_linear_cpu.cpp); false,
// with nothing done, where the CPU has none or the rows are too few for them to pay.
bool int8_bf16_linear(const at::Tensor& x, const int8_t* w, int64_t panels, const float* bias, const float* scale,
                      at::BFloat16* out);
at::Tensor lowbit_linear(const at::Tensor& x, const at::Tensor& records, const c10::optional<at::Tensor>& bias);
// (k/v_scales: an int8 cache's [slots, kv_heads] float32, else none)
at::Tensor paged_decode(const at::Tensor& query, const at::Tensor& k_cache, const at::Tensor& v_cache,
                        const at::Tensor& tables, const at::Tensor& starts, const at::Tensor& lengths,
                        int64_t block_size, double scale, const c10::optional<at::Tensor>& k_scales = c10::nullopt,
                        const c10::optional<at::Tensor>& v_scales = c10::nullopt);

}  // namespace ozwell
