// A whole decoder layer for a step of decodes only, in one op (see engines/native/cpu_fused.py).
//
// At one decoding sequence a layer's work is a dozen small ops, and the Python around each (the module calls, the
// attention hook, the splits and views) cost gemma-3-270m about 5 ms of a 25 ms step on a 2-core CPU. This op runs
// the same ops, in the same order, from C++: the input norm, the joined q/k/v linear, the q/k norm and rotary
// embedding, the new keys and values written to the paged cache, the decode attention read from it in place, the
// output linear, the residual add with the norms around it, the joined gate/up linear, the activation, the down
// linear and the last residual add. So its result is the fused Python layer's, to the bit (an int8 KV cache's rows
// too: quantised as engines/native/kv_cache.py quantises them).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "ops_cpu.h"

namespace ozwell {
namespace {

// The layer's tensors, in this order (Tensor?[] from cpu_fused.py; None where the layer has no such part):
enum Weight : int64_t {
  IN_NORM,
  QKV, QKV_BIAS, QKV_SCALES,  // a blocked weight [out / 8, in, 8] (float32, or int8 with its scales)
  Q_NORM, K_NORM,
  O, O_BIAS, O_SCALES,
  ATTN_OUT_NORM,  // Gemma's post-attention norm (of the attention's output, before the residual add)
  MLP_IN_NORM,    // Gemma's pre-feedforward norm, Llama's post-attention norm
  GATE_UP, GATE_UP_BIAS, GATE_UP_SCALES,
  DOWN, DOWN_BIAS, DOWN_SCALES,
  MLP_OUT_NORM,  // Gemma's post-feedforward norm
  WEIGHTS
};
// float[]: the norms' eps, the q/k norms' eps, the attention's scale; int[]:
enum Int : int64_t { GEMMA, ACT, HEAD_DIM, Q_SIZE, K_SIZE, V_SIZE, GATE_SIZE, INTS };

using Weights = c10::List<c10::optional<at::Tensor>>;

c10::optional<at::Tensor> get(const Weights& w, int64_t i) { return w.get(i); }

// x @ one of the layer's blocked weights, in x's dtype (float32 or bfloat16; another is widened and rounded back)
at::Tensor linear(const at::Tensor& x, const Weights& w, int64_t i) {
  const auto weight = get(w, i);
  TORCH_CHECK(weight.has_value(), "decode_layer: a linear has no blocked weight");
  const bool kernel_dtype = x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16;
  auto out = blocked_linear(kernel_dtype ? x : x.to(at::kFloat), *weight, get(w, i + 1), get(w, i + 2));
  return out.scalar_type() == x.scalar_type() ? out : out.to(x.scalar_type());
}

// cache [slots, kv_heads, dim] (contiguous) <- rows [tokens, kv_heads, dim] at slots [tokens]: one copy a row, where
// index_copy_ costs a dispatch and a TensorIterator a call (about 10 us a layer at one token)
void write_slots(at::Tensor& cache, const at::Tensor& rows_in, const at::Tensor& slots_in) {
  TORCH_CHECK(cache.is_contiguous() && cache.dim() == 3 && rows_in.dim() == 3 && rows_in.size(1) == cache.size(1) &&
                  rows_in.size(2) == cache.size(2), "decode_layer: the cache and the new keys/values do not match");
  // each token's row read in place (the values are a narrow of the joined q/k/v projection's output)
  const auto rows = as_rows(rows_in.to(cache.scalar_type()), rows_in.size(1) * rows_in.size(2));
  const auto slots = slots_in.to(at::kLong).contiguous();
  TORCH_CHECK(slots.numel() == rows.size(0), "decode_layer: a slot for each token");
  const int64_t n = slots.numel(), row_bytes = rows.size(1) * rows.element_size(),
                capacity = cache.size(0);
  const int64_t* slot = slots.data_ptr<int64_t>();
  auto* dst = static_cast<char*>(cache.data_ptr());
  const auto* src = static_cast<const char*>(rows.data_ptr());
  for (int64_t t = 0; t < n; ++t) {
    TORCH_CHECK(slot[t] >= 0 && slot[t] < capacity, "decode_layer: slot ", slot[t], " is outside the cache");
    std::memcpy(dst + slot[t] * row_bytes, src + t * rows.stride(0) * rows.element_size(), row_bytes);
  }
}

// An int8 cache [slots, kv_heads, dim] and its scales [slots, kv_heads] <- rows [tokens, kv_heads, dim] at slots:
// each row rounded to round(x * (127 / absmax)) in float32 with scale absmax / 127, as kv_cache.quantize does.
void write_slots_int8(at::Tensor& cache, at::Tensor& scales, const at::Tensor& rows_in, const at::Tensor& slots_in) {
  TORCH_CHECK(cache.is_contiguous() && cache.dim() == 3 && rows_in.dim() == 3 && rows_in.size(1) == cache.size(1) &&
                  rows_in.size(2) == cache.size(2) && scales.is_contiguous() && scales.scalar_type() == at::kFloat &&
                  scales.dim() == 2 && scales.size(0) == cache.size(0) && scales.size(1) == cache.size(1),
              "decode_layer: the int8 cache, its scales and the new keys/values do not match");
  const int64_t heads = cache.size(1), dim = cache.size(2), capacity = cache.size(0);
  const auto rows = as_rows(rows_in.to(at::kFloat), heads * dim);
  const auto slots = slots_in.to(at::kLong).contiguous();
  TORCH_CHECK(slots.numel() == rows.size(0), "decode_layer: a slot for each token");
  const int64_t* slot = slots.data_ptr<int64_t>();
  int8_t* dst = cache.data_ptr<int8_t>();
  float* scale = scales.data_ptr<float>();
  for (int64_t t = 0; t < slots.numel(); ++t) {
    TORCH_CHECK(slot[t] >= 0 && slot[t] < capacity, "decode_layer: slot ", slot[t], " is outside the cache");
    for (int64_t h = 0; h < heads; ++h) {
      const float* x = rows.data_ptr<float>() + t * rows.stride(0) + h * dim;
      float amax = 0.f;
      for (int64_t d = 0; d < dim; ++d) amax = std::max(amax, std::fabs(x[d]));
      const float inv = amax > 0.f ? 127.f / amax : 0.f;
      int8_t* q = dst + (slot[t] * heads + h) * dim;
      for (int64_t d = 0; d < dim; ++d)
        q[d] = static_cast<int8_t>(std::min(127.f, std::max(-127.f, std::nearbyint(x[d] * inv))));
      scale[slot[t] * heads + h] = amax / 127.f;
    }
  }
}

}  // namespace

// hidden [..., tokens, hidden]: one decoding token per sequence, in order; cos/sin [..., tokens, head_dim];
// k/v_cache: [layers, slots, kv_heads, head_dim], of which this is layer `layer`; slots [tokens]: where each token's
// K/V goes; tables, starts, lengths: as paged_decode takes them; k/v_scales: an int8 cache's, [layers, slots,
// kv_heads] float32 (written with it), else None.
at::Tensor decode_layer(const at::Tensor& hidden, const Weights& w, at::ArrayRef<double> f, at::IntArrayRef i,
                        const at::Tensor& cos, const at::Tensor& sin, int64_t layer, const at::Tensor& k_caches,
                        const at::Tensor& v_caches, const at::Tensor& slots, const at::Tensor& tables,
                        const at::Tensor& starts, const at::Tensor& lengths, int64_t block_size,
                        const c10::optional<at::Tensor>& k_scales_in, const c10::optional<at::Tensor>& v_scales_in) {
  TORCH_CHECK(static_cast<int64_t>(w.size()) == WEIGHTS && f.size() == 3 && static_cast<int64_t>(i.size()) == INTS,
              "decode_layer: ", WEIGHTS, " weights, 3 floats and ", INTS, " ints");
  const bool gemma = i[GEMMA] != 0;
  const double eps = f[0], qk_eps = f[1], scale = f[2];
  const int64_t dim = i[HEAD_DIM], q_size = i[Q_SIZE], k_size = i[K_SIZE], v_size = i[V_SIZE];
  const int64_t tokens = hidden.numel() / hidden.size(-1);
  TORCH_CHECK(k_caches.dim() == 4 && layer >= 0 && layer < k_caches.size(0) && v_caches.sizes() == k_caches.sizes(),
              "decode_layer: caches [layers, slots, kv_heads, head_dim] and a layer among them");
  at::Tensor k_cache = k_caches.select(0, layer), v_cache = v_caches.select(0, layer);  // written in place
  const bool int8 = k_caches.scalar_type() == at::kChar;
  TORCH_CHECK(int8 == (k_scales_in.has_value() && k_scales_in->defined()) &&
                  int8 == (v_scales_in.has_value() && v_scales_in->defined()),
              "decode_layer: an int8 cache takes k and v scales, another none");
  c10::optional<at::Tensor> k_scales, v_scales;  // this layer's
  if (int8) k_scales = k_scales_in->select(0, layer), v_scales = v_scales_in->select(0, layer);

  const auto x = rms_norm(hidden, *get(w, IN_NORM), eps, gemma);
  const auto qkv = linear(x, w, QKV);
  auto [q, k] = qk_norm_rope(qkv.narrow(-1, 0, q_size), qkv.narrow(-1, q_size, k_size), cos, sin, get(w, Q_NORM),
                             get(w, K_NORM), qk_eps, gemma, dim);
  const auto v = qkv.narrow(-1, q_size + k_size, v_size).reshape({tokens, v_size / dim, dim});
  if (int8) {
    write_slots_int8(k_cache, *k_scales, k, slots);
    write_slots_int8(v_cache, *v_scales, v, slots);
  } else {
    write_slots(k_cache, k, slots);
    write_slots(v_cache, v, slots);
  }
  const auto attended = paged_decode(q, k_cache, v_cache, tables, starts, lengths, block_size, scale, k_scales,
                                     v_scales);

  auto sizes = hidden.sizes().vec();
  sizes.back() = -1;
  const auto o = linear(attended.reshape(sizes), w, O);
  auto [h, mlp_in] = add_rms_norm(hidden, o, get(w, ATTN_OUT_NORM), get(w, MLP_IN_NORM), eps, gemma);
  const auto gate_up = linear(mlp_in, w, GATE_UP);
  const int64_t gate = i[GATE_SIZE];
  const auto act = act_mul(gate_up.narrow(-1, 0, gate), gate_up.narrow(-1, gate, gate_up.size(-1) - gate), i[ACT]);
  const auto down = linear(act, w, DOWN);
  return std::get<0>(add_rms_norm(h, down, get(w, MLP_OUT_NORM), c10::nullopt, eps, gemma));
}

}  // namespace ozwell

TORCH_LIBRARY_FRAGMENT(ozwell_cpu, m) {
  m.def("decode_layer(Tensor hidden, Tensor?[] weights, float[] floats, int[] ints, Tensor cos, Tensor sin, "
        "int layer, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor slots, Tensor tables, Tensor starts, "
        "Tensor lengths, int block_size, Tensor(c!)? k_scales=None, Tensor(d!)? v_scales=None) -> Tensor");
  m.impl("decode_layer", c10::DispatchKey::CPU, &ozwell::decode_layer);
}
