// Fused elementwise ops of a decoder layer, on a CPU (see engines/native/cpu_fused.py).
//
// A decode step of a small model runs a few hundred tiny eager ops per layer pass: an RMSNorm alone is a cast,
// a pow, a mean, an add, an rsqrt, two multiplies and a cast back. Each op allocates its output and is
// dispatched on its own, and at one to a few rows that overhead is most of the step outside the GEMMs. These
// ops do in one pass what the transformers modules do in many: RMSNorm (Gemma's 1 + w, or Llama's w), the
// residual add with the norms around it, the per-head q/k norm with the rotary embedding, and the gated MLP
// activation. They compute in float32 and round once to the tensor's dtype (float32 or bfloat16).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "ops_cpu.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <tuple>
#include <type_traits>
#include <vector>

namespace ozwell {

// What a row's RMSNorm multiplies by: 1 / sqrt(mean(x^2) + eps).
template <typename T>
inline float inv_rms(const T* x, int64_t n, double eps) {
  float acc = 0.f;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) {
    const float v = static_cast<float>(x[i]);
    acc += v * v;
  }
  return 1.f / std::sqrt(acc / static_cast<float>(n) + static_cast<float>(eps));
}

// out = norm(x) * w: Gemma's (x * r * (1 + w)) rounded once; Llama's w * round(x * r) rounded again.
template <typename T>
inline void norm_row(const T* x, const float* w, bool gemma, double eps, int64_t n, T* out) {
  const float r = inv_rms(x, n, eps);
  if (gemma) {
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<T>(static_cast<float>(x[i]) * r * (1.f + w[i]));
  } else {
    for (int64_t i = 0; i < n; ++i)
      out[i] = static_cast<T>(w[i] * static_cast<float>(static_cast<T>(static_cast<float>(x[i]) * r)));
  }
}

at::Tensor float_weight(const at::Tensor& w, int64_t n) {
  TORCH_CHECK(w.dim() == 1 && w.size(0) == n, "a norm weight must be [", n, "]");
  return w.to(at::kFloat).contiguous();
}

void check(const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu(), "the fused ops run on the CPU");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, "float32 or bfloat16 only");
}

#define OZWELL_DISPATCH(dtype, ...)                        \
  if ((dtype) == at::kFloat) {                             \
    using scalar = float;                                  \
    __VA_ARGS__();                                         \
  } else {                                                 \
    using scalar = at::BFloat16;                           \
    __VA_ARGS__();                                         \
  }

// x [..., n] -> RMSNorm(x) with weight w [n].
at::Tensor rms_norm(const at::Tensor& x_in, const at::Tensor& w_in, double eps, bool gemma) {
  check(x_in);
  const auto x = x_in.contiguous();
  const int64_t n = x.size(-1), rows = x.numel() / std::max<int64_t>(n, 1);
  const auto w = float_weight(w_in, n);
  auto out = at::empty_like(x);
  OZWELL_DISPATCH(x.scalar_type(), [&] {
    const scalar* xp = x.data_ptr<scalar>();
    scalar* op = out.data_ptr<scalar>();
    const float* wp = w.data_ptr<float>();
    parallel_for(0, rows, 256, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) norm_row(xp + r * n, wp, gemma, eps, n, op + r * n);
    });
  });
  return out;
}

// The residual stream's update and the next norm: h = residual + (norm(x, w_x) if w_x else x), then
// (h, norm(h, w_out)) where w_out is given, else (h, an empty tensor).
std::tuple<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& residual_in, const at::Tensor& x_in,
                                                const c10::optional<at::Tensor>& w_x_in,
                                                const c10::optional<at::Tensor>& w_out_in, double eps, bool gemma) {
  check(x_in);
  TORCH_CHECK(residual_in.sizes() == x_in.sizes() && residual_in.scalar_type() == x_in.scalar_type(),
              "residual and x differ in shape or dtype");
  const auto x = x_in.contiguous();
  const auto residual = residual_in.contiguous();
  const int64_t n = x.size(-1), rows = x.numel() / std::max<int64_t>(n, 1);
  const bool has_x = w_x_in.has_value() && w_x_in->defined();
  const bool has_out = w_out_in.has_value() && w_out_in->defined();
  const auto w_x = has_x ? float_weight(*w_x_in, n) : at::Tensor();
  const auto w_out = has_out ? float_weight(*w_out_in, n) : at::Tensor();
  auto h = at::empty_like(x);
  auto normed = has_out ? at::empty_like(x) : at::empty({0}, x.options());
  OZWELL_DISPATCH(x.scalar_type(), [&] {
    const scalar* xp = x.data_ptr<scalar>();
    const scalar* rp = residual.data_ptr<scalar>();
    scalar* hp = h.data_ptr<scalar>();
    scalar* np = has_out ? normed.data_ptr<scalar>() : nullptr;
    const float* wx = has_x ? w_x.data_ptr<float>() : nullptr;
    const float* wo = has_out ? w_out.data_ptr<float>() : nullptr;
    parallel_for(0, rows, 256, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar* xr = xp + r * n;
        const scalar* rr = rp + r * n;
        scalar* hr = hp + r * n;
        if (has_x) {
          norm_row(xr, wx, gemma, eps, n, hr);  // norm(x), rounded as the module rounds it, then the add
          for (int64_t i = 0; i < n; ++i) hr[i] = static_cast<scalar>(static_cast<float>(rr[i]) + static_cast<float>(hr[i]));
        } else {
          for (int64_t i = 0; i < n; ++i) hr[i] = static_cast<scalar>(static_cast<float>(rr[i]) + static_cast<float>(xr[i]));
        }
        if (has_out) norm_row(hr, wo, gemma, eps, n, np + r * n);
      }
    });
  });
  return {h, normed};
}

// One projection's heads: an optional per-head norm (Gemma's q_norm/k_norm), then the rotary embedding
// (HF's q * cos + rotate_half(q) * sin), in float; x [tokens, heads * dim] -> out [tokens, heads, dim].
template <typename T>
void norm_rope(const at::Tensor& x, const float* w, bool gemma, double eps, const T* cos, const T* sin,
               int64_t heads, int64_t dim, at::Tensor& out) {
  const int64_t tokens = x.size(0), half = dim / 2, ldx = x.stride(0);  // rows of x may be apart (a narrow)
  const T* xp = x.data_ptr<T>();
  T* op = out.data_ptr<T>();
  parallel_for(0, tokens * heads, 1024, [&](int64_t begin, int64_t end) {
    std::vector<float> v(dim);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t t = task / heads;
      const T* xr = xp + t * ldx + task % heads * dim;
      if (w != nullptr) {
        const float r = inv_rms(xr, dim, eps);
        for (int64_t d = 0; d < dim; ++d) {
          const float normed = static_cast<float>(xr[d]) * r;
          // the module's output is rounded to the dtype before the rotary embedding reads it
          v[d] = gemma ? static_cast<float>(static_cast<T>(normed * (1.f + w[d])))
                       : static_cast<float>(static_cast<T>(w[d] * static_cast<float>(static_cast<T>(normed))));
        }
      } else {
        for (int64_t d = 0; d < dim; ++d) v[d] = static_cast<float>(xr[d]);
      }
      const T* c = cos + t * dim;
      const T* s = sin + t * dim;
      T* o = op + task * dim;
      for (int64_t d = 0; d < half; ++d) {
        o[d] = static_cast<T>(v[d] * static_cast<float>(c[d]) - v[d + half] * static_cast<float>(s[d]));
        o[d + half] =
            static_cast<T>(v[d + half] * static_cast<float>(c[d + half]) + v[d] * static_cast<float>(s[d + half]));
      }
    }
  });
}

// q [..., tokens, heads * dim], k [..., tokens, kv_heads * dim], cos/sin [..., tokens, dim] ->
// (q [tokens, heads, dim], k [tokens, kv_heads, dim]), each head normed (where its weight is given) and rotated.
std::tuple<at::Tensor, at::Tensor> qk_norm_rope(const at::Tensor& q_in, const at::Tensor& k_in,
                                                const at::Tensor& cos_in, const at::Tensor& sin_in,
                                                const c10::optional<at::Tensor>& q_w_in,
                                                const c10::optional<at::Tensor>& k_w_in, double eps, bool gemma,
                                                int64_t dim) {
  check(q_in);
  TORCH_CHECK(k_in.scalar_type() == q_in.scalar_type() && cos_in.scalar_type() == q_in.scalar_type() &&
                  sin_in.scalar_type() == q_in.scalar_type(), "q, k, cos and sin differ in dtype");
  TORCH_CHECK(dim > 0 && dim % 2 == 0 && cos_in.size(-1) == dim && sin_in.size(-1) == dim, "bad rotary dim");
  const int64_t tokens = q_in.numel() / q_in.size(-1);
  TORCH_CHECK(q_in.size(-1) % dim == 0 && k_in.size(-1) % dim == 0 && k_in.numel() / k_in.size(-1) == tokens &&
                  cos_in.numel() == tokens * dim && sin_in.numel() == tokens * dim, "bad shapes");
  const int64_t heads = q_in.size(-1) / dim, kv_heads = k_in.size(-1) / dim;
  const auto q = as_rows(q_in, heads * dim);
  const auto k = as_rows(k_in, kv_heads * dim);
  const auto cos = cos_in.contiguous();
  const auto sin = sin_in.contiguous();
  const bool has_w = q_w_in.has_value() && q_w_in->defined();
  TORCH_CHECK(has_w == (k_w_in.has_value() && k_w_in->defined()), "both q and k norms, or neither");
  const auto q_w = has_w ? float_weight(*q_w_in, dim) : at::Tensor();
  const auto k_w = has_w ? float_weight(*k_w_in, dim) : at::Tensor();
  auto q_out = at::empty({tokens, heads, dim}, q.options());
  auto k_out = at::empty({tokens, kv_heads, dim}, k.options());
  OZWELL_DISPATCH(q.scalar_type(), [&] {
    const scalar* c = cos.data_ptr<scalar>();
    const scalar* s = sin.data_ptr<scalar>();
    norm_rope<scalar>(q, has_w ? q_w.data_ptr<float>() : nullptr, gemma, eps, c, s, heads, dim, q_out);
    norm_rope<scalar>(k, has_w ? k_w.data_ptr<float>() : nullptr, gemma, eps, c, s, kv_heads, dim, k_out);
  });
  return {q_out, k_out};
}

// tanh as a rational function of x (odd degree 13 over even degree 6, the form Eigen uses, on [-7.9, 7.9], where float tanh
// reaches +-1): a few ulp from std::tanh, and only multiplies, adds, a divide and a clamp, so the compiler
// vectorises the loops that call it (std::tanh and std::exp it does not).
inline float tanh_rational(float x) {
  x = std::min(std::max(x, -7.90531110763549805f), 7.90531110763549805f);
  const float x2 = x * x;
  float p = -2.76076847742355e-16f;
  p = p * x2 + 2.00018790482477e-13f;
  p = p * x2 - 8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  float q = 1.19825839466702e-06f;
  q = q * x2 + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  return x * p / q;
}

template <int act>
inline float activation(float x) {  // GELU (tanh approximation), or SiLU as x * sigmoid(x) = x * (1 + tanh(x / 2)) / 2
  constexpr float beta = 0.7978845608028654f, kappa = 0.044715f;  // sqrt(2 / pi)
  return act == 0 ? 0.5f * x * (1.f + tanh_rational(beta * (x + kappa * x * x * x)))
                  : 0.5f * x * (1.f + tanh_rational(0.5f * x));
}

template <typename T, int act>
void act_mul_range(const T* g, const T* u, T* o, int64_t begin, int64_t end) {
  // the activation's output is rounded to the dtype before the multiply, as the module does
  if constexpr (std::is_same_v<T, at::BFloat16>) {
    const auto* gb = reinterpret_cast<const uint16_t*>(g);
    const auto* ub = reinterpret_cast<const uint16_t*>(u);
    auto* ob = reinterpret_cast<uint16_t*>(o);
#pragma omp simd
    for (int64_t i = begin; i < end; ++i)
      ob[i] = float_bf16(bf16_float(float_bf16(activation<act>(bf16_float(gb[i])))) * bf16_float(ub[i]));
  } else {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) o[i] = activation<act>(g[i]) * u[i];
  }
}

// The gated MLP's activation: act(gate) * up, act 0 = GELU (tanh approximation), 1 = SiLU.
at::Tensor act_mul(const at::Tensor& gate_in, const at::Tensor& up_in, int64_t act) {
  check(gate_in);
  TORCH_CHECK(gate_in.sizes() == up_in.sizes() && gate_in.scalar_type() == up_in.scalar_type(),
              "gate and up differ in shape or dtype");
  TORCH_CHECK(act == 0 || act == 1, "act: 0 (gelu tanh) or 1 (silu)");
  const int64_t n = gate_in.size(-1);
  const auto gate = as_rows(gate_in, n);  // the halves of a joined gate/up projection, read in place
  const auto up = as_rows(up_in, n);
  const int64_t rows = gate.size(0), ldg = gate.stride(0), ldu = up.stride(0);
  auto out = at::empty(gate_in.sizes(), gate_in.options());
  OZWELL_DISPATCH(gate.scalar_type(), [&] {
    const scalar* g = gate.data_ptr<scalar>();
    const scalar* u = up.data_ptr<scalar>();
    scalar* o = out.data_ptr<scalar>();
    parallel_for(0, rows, std::max<int64_t>(1, (1 << 18) / std::max<int64_t>(n, 1)), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        if (act == 0) {
          act_mul_range<scalar, 0>(g + r * ldg, u + r * ldu, o + r * n, 0, n);
        } else {
          act_mul_range<scalar, 1>(g + r * ldg, u + r * ldu, o + r * n, 0, n);
        }
      }
    });
  });
  return out;
}

// ---- linears for few rows: float32 weights, or int8 weights with a scale per output column ---------------
// A decode step's linears multiply a few rows by a weight read from memory once a step: at 1-32 rows that read
// is the cost. The weight is laid out once, at load, as [out / 8, in, 8] (8 output columns interleaved), so a
// tile of up to 8 rows walks one contiguous panel with one 8-wide load and up to 8 FMAs per input column,
// the panel staying in cache while row tiles reuse it. Threads split the output columns.
// An int8 weight (`quantization: int8`, cpu_quant.py) is read in the same layout, a quarter of the bytes: each
// 8-wide load widens 8 int8s to floats in registers, the sums run in float32, and the column's scale multiplies
// the sum once at the end (so the result is x @ (q * scale)^T, what the dequantised weight would give).
#if defined(__AVX2__) && defined(__FMA__)
template <typename W>
inline __m256 load_w(const W* p);
template <>
inline __m256 load_w<float>(const float* p) {
  return _mm256_loadu_ps(p);
}
template <>
inline __m256 load_w<int8_t>(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

// A float32 weight's sums start from the bias; an int8 weight's are scaled first, then the bias added.
inline __m256 acc_start(const float* bias, const float* scale) {
  return bias != nullptr && scale == nullptr ? _mm256_loadu_ps(bias) : _mm256_setzero_ps();
}
inline __m256 acc_finish(__m256 acc, const float* bias, const float* scale) {
  if (scale == nullptr) return acc;
  return bias != nullptr ? _mm256_fmadd_ps(acc, _mm256_loadu_ps(scale), _mm256_loadu_ps(bias))
                         : _mm256_mul_ps(acc, _mm256_loadu_ps(scale));
}

// The hardware prefetchers stop at each 4 KB page, and at a few rows a panel's read is the whole cost: each
// cache line of the weight is asked for this far ahead of its use (the head of gemma-3-270m at one row, int8:
// 16.5 -> 20.4 GB/s, near the 22 GB/s of a plain read of the same bytes on a 2-core AVX2 EPYC).
constexpr int64_t PREFETCH_BYTES = 4096;
template <typename W>
constexpr int64_t k_per_line = 64 / (8 * sizeof(W));  // input columns a 64-byte line of a panel holds
template <typename W>
inline void prefetch_ahead(const W* p) {
  _mm_prefetch(reinterpret_cast<const char*>(p) + PREFETCH_BYTES, _MM_HINT_T0);
}
// In a loop that steps KS input columns at a time through a panel: at each line boundary, every line of the step.
template <int KS, typename W>
inline void prefetch_step(const W* panel, int64_t k) {
  constexpr int64_t lines = KS > k_per_line<W> ? KS / k_per_line<W> : 1;
  if (k % k_per_line<W> < KS)
    for (int64_t line = 0; line < lines; ++line) prefetch_ahead(panel + (k + line * k_per_line<W>) * 8);
}

// MT rows by one panel. An FMA waits about 4 cycles for its accumulator, so a tile keeps 8 independent sums:
// each row's sum is split over KS = 8 / MT interleaved input columns (4 rows: 2, 2 rows: 4), added at the end;
// with one sum a row, 2 rows ran at half the speed of one (int8 head: 25 against 12.7 ms).
template <int MT, typename W>
inline void linear_tile(const float* x, int64_t ldx, const W* w, int64_t in, float* out, int64_t ldo,
                        const float* bias, const float* scale) {
  constexpr int KS = MT >= 8 ? 1 : 8 / MT;
  __m256 acc[KS][MT];
  for (int j = 0; j < KS; ++j)
    for (int m = 0; m < MT; ++m) acc[j][m] = j == 0 ? acc_start(bias, scale) : _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + KS <= in; k += KS) {
    prefetch_step<KS>(w, k);
    for (int j = 0; j < KS; ++j) {
      const __m256 wk = load_w<W>(w + (k + j) * 8);
      for (int m = 0; m < MT; ++m) acc[j][m] = _mm256_fmadd_ps(_mm256_set1_ps(x[m * ldx + k + j]), wk, acc[j][m]);
    }
  }
  for (; k < in; ++k) {
    const __m256 wk = load_w<W>(w + k * 8);
    for (int m = 0; m < MT; ++m) acc[0][m] = _mm256_fmadd_ps(_mm256_set1_ps(x[m * ldx + k]), wk, acc[0][m]);
  }
  for (int m = 0; m < MT; ++m) {
    for (int j = 1; j < KS; ++j) acc[0][m] = _mm256_add_ps(acc[0][m], acc[j][m]);
    _mm256_storeu_ps(out + m * ldo, acc_finish(acc[0][m], bias, scale));
  }
}

// One row: four accumulators over interleaved input columns, so that consecutive FMAs do not wait on each
// other (one accumulator would make the panel's read wait on the FMA latency).
template <typename W>
inline void linear_row(const float* x, const W* w, int64_t in, float* out, const float* bias, const float* scale) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), acc2 = _mm256_setzero_ps(),
         acc3 = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 4 <= in; k += 4) {
    prefetch_step<4>(w, k);  // a line covers 2 (float) or 8 (int8) columns
    acc0 = _mm256_fmadd_ps(_mm256_set1_ps(x[k]), load_w<W>(w + k * 8), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_set1_ps(x[k + 1]), load_w<W>(w + k * 8 + 8), acc1);
    acc2 = _mm256_fmadd_ps(_mm256_set1_ps(x[k + 2]), load_w<W>(w + k * 8 + 16), acc2);
    acc3 = _mm256_fmadd_ps(_mm256_set1_ps(x[k + 3]), load_w<W>(w + k * 8 + 24), acc3);
  }
  for (; k < in; ++k) acc0 = _mm256_fmadd_ps(_mm256_set1_ps(x[k]), load_w<W>(w + k * 8), acc0);
  __m256 sum = _mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3));
  if (bias != nullptr && scale == nullptr) sum = _mm256_add_ps(sum, _mm256_loadu_ps(bias));
  _mm256_storeu_ps(out, acc_finish(sum, bias, scale));
}
#define OZWELL_ROW 1

// Two adjacent panels (16 columns) at once: two weight loads and MT broadcasts feed 2 x MT FMAs, which is what
// keeps the FMA units, not the load ports, the limit when several rows come (a prefill chunk, a batch of decodes).
// Below 4 rows each row's sums are split over KS interleaved input columns, for 8 independent sums (as above).
template <int MT, typename W>
inline void linear_tile2(const float* x, int64_t ldx, const W* w, int64_t in, float* out, int64_t ldo,
                         const float* bias, const float* scale) {
  constexpr int KS = MT >= 4 ? 1 : 4 / MT;
  __m256 acc0[KS][MT], acc1[KS][MT];
  const float* bias1 = bias != nullptr ? bias + 8 : nullptr;
  const float* scale1 = scale != nullptr ? scale + 8 : nullptr;
  for (int j = 0; j < KS; ++j)
    for (int m = 0; m < MT; ++m) {
      acc0[j][m] = j == 0 ? acc_start(bias, scale) : _mm256_setzero_ps();
      acc1[j][m] = j == 0 ? acc_start(bias1, scale1) : _mm256_setzero_ps();
    }
  const W* w1 = w + in * 8;
  int64_t k = 0;
  for (; k + KS <= in; k += KS) {
    prefetch_step<KS>(w, k);
    prefetch_step<KS>(w1, k);
    for (int j = 0; j < KS; ++j) {
      const __m256 a = load_w<W>(w + (k + j) * 8), b = load_w<W>(w1 + (k + j) * 8);
      for (int m = 0; m < MT; ++m) {
        const __m256 xv = _mm256_set1_ps(x[m * ldx + k + j]);
        acc0[j][m] = _mm256_fmadd_ps(xv, a, acc0[j][m]);
        acc1[j][m] = _mm256_fmadd_ps(xv, b, acc1[j][m]);
      }
    }
  }
  for (; k < in; ++k) {
    const __m256 a = load_w<W>(w + k * 8), b = load_w<W>(w1 + k * 8);
    for (int m = 0; m < MT; ++m) {
      const __m256 xv = _mm256_set1_ps(x[m * ldx + k]);
      acc0[0][m] = _mm256_fmadd_ps(xv, a, acc0[0][m]);
      acc1[0][m] = _mm256_fmadd_ps(xv, b, acc1[0][m]);
    }
  }
  for (int m = 0; m < MT; ++m) {
    for (int j = 1; j < KS; ++j) {
      acc0[0][m] = _mm256_add_ps(acc0[0][m], acc0[j][m]);
      acc1[0][m] = _mm256_add_ps(acc1[0][m], acc1[j][m]);
    }
    _mm256_storeu_ps(out + m * ldo, acc_finish(acc0[0][m], bias, scale));
    _mm256_storeu_ps(out + m * ldo + 8, acc_finish(acc1[0][m], bias1, scale1));
  }
}
#define OZWELL_TILE2 1
#else  // the same in plain C++ (the compiler vectorises what it can)
template <int MT, typename W>
inline void linear_tile(const float* x, int64_t ldx, const W* w, int64_t in, float* out, int64_t ldo,
                        const float* bias, const float* scale) {
  float acc[MT][8];
  for (int m = 0; m < MT; ++m)
    for (int j = 0; j < 8; ++j) acc[m][j] = bias != nullptr && scale == nullptr ? bias[j] : 0.f;
  for (int64_t k = 0; k < in; ++k)
    for (int m = 0; m < MT; ++m)
      for (int j = 0; j < 8; ++j) acc[m][j] += x[m * ldx + k] * static_cast<float>(w[k * 8 + j]);
  for (int m = 0; m < MT; ++m)
    for (int j = 0; j < 8; ++j)
      out[m * ldo + j] = scale == nullptr ? acc[m][j] : acc[m][j] * scale[j] + (bias != nullptr ? bias[j] : 0.f);
}
#endif

// weight [out, in] (float32 or int8) -> [out / 8, in, 8]
at::Tensor block_weight(const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2 && (weight.scalar_type() == at::kFloat || weight.scalar_type() == at::kChar) &&
                  weight.size(0) % 8 == 0,
              "block_weight: a float32 or int8 [out, in] weight with out a multiple of 8");
  const int64_t out = weight.size(0), in = weight.size(1);
  return weight.contiguous().view({out / 8, 8, in}).transpose(1, 2).contiguous();
}

// Rows [r0, r1) times panels [p0, p1) of a blocked weight (w: panel p0's first element).
template <typename W>
void panel_rows(const float* xp, int64_t r0, int64_t r1, int64_t in, const W* w0, int64_t p0, int64_t p1,
                const float* bp, const float* sp, float* op, int64_t out_features) {
  int64_t p = p0;
  const auto panel = [&](int64_t q) { return w0 + (q - p0) * in * 8; };
#ifdef OZWELL_TILE2
  // six rows or more (a prefill chunk, a large batch of decodes): tiles of 6 rows by 16 columns, the rest of the
  // rows in tiles of 4, 2 and 1 by 16; below six rows, single panels (measured: no faster in pairs there)
  for (; p + 2 <= p1 && r1 - r0 >= 6; p += 2) {
    const W* w = panel(p);
    const float* b = bp != nullptr ? bp + p * 8 : nullptr;
    const float* s = sp != nullptr ? sp + p * 8 : nullptr;
    float* o = op + p * 8;
    int64_t m = r0;
    for (; m + 6 <= r1; m += 6) linear_tile2<6>(xp + m * in, in, w, in, o + m * out_features, out_features, b, s);
    for (; m + 4 <= r1; m += 4) linear_tile2<4>(xp + m * in, in, w, in, o + m * out_features, out_features, b, s);
    for (; m + 2 <= r1; m += 2) linear_tile2<2>(xp + m * in, in, w, in, o + m * out_features, out_features, b, s);
    for (; m < r1; ++m) linear_tile2<1>(xp + m * in, in, w, in, o + m * out_features, out_features, b, s);
  }
#endif
  for (; p < p1; ++p) {
    const W* w = panel(p);
    const float* b = bp != nullptr ? bp + p * 8 : nullptr;
    const float* s = sp != nullptr ? sp + p * 8 : nullptr;
    int64_t m = r0;
    for (; m + 8 <= r1; m += 8) linear_tile<8>(xp + m * in, in, w, in, op + m * out_features + p * 8, out_features, b, s);
    for (; m + 4 <= r1; m += 4) linear_tile<4>(xp + m * in, in, w, in, op + m * out_features + p * 8, out_features, b, s);
    for (; m + 2 <= r1; m += 2) linear_tile<2>(xp + m * in, in, w, in, op + m * out_features + p * 8, out_features, b, s);
#ifdef OZWELL_ROW
    for (; m < r1; ++m) linear_row(xp + m * in, w, in, op + m * out_features + p * 8, b, s);
#else
    for (; m < r1; ++m) linear_tile<1>(xp + m * in, in, w, in, op + m * out_features + p * 8, out_features, b, s);
#endif
  }
}

template <typename W>
void blocked_linear_impl(const float* xp, int64_t rows, int64_t in, const W* wp, int64_t panels, const float* bp,
                         const float* sp, float* op) {
  const int64_t out_features = panels * 8;
  constexpr int64_t row_chunk = 192;  // rows whose inputs stay in cache while panels pass (64: 0.8x oneDNN at 512)
  split_for(panels, rows, 64, [&](int64_t p0, int64_t p1) {  // ops_cpu.h
    for (int64_t r0 = 0; r0 < rows; r0 += row_chunk)
      panel_rows<W>(xp, r0, std::min(rows, r0 + row_chunk), in, wp + p0 * in * 8, p0, p1, bp, sp, op, out_features);
  });
}

namespace {

// bfloat16 rows widened to float32, and float32 sums rounded to bfloat16 (as at::BFloat16 rounds), in loops on the
// pool: Tensor::to would run them on OpenMP, whose workers would then spin beside the pool's
void widen_into(const at::Tensor& x, float* dst) {
  const auto* src = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  parallel_for(0, x.numel(), 1 << 16, [&](int64_t begin, int64_t end) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) dst[i] = bf16_float(src[i]);
  });
}

at::Tensor widen(const at::Tensor& x) {
  auto out = at::empty(x.sizes(), x.options().dtype(at::kFloat));
  widen_into(x, out.data_ptr<float>());
  return out;
}

at::Tensor rounded(const at::Tensor& sums) {
  auto out = at::empty(sums.sizes(), sums.options().dtype(at::kBFloat16));
  const float* src = sums.data_ptr<float>();
  auto* dst = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  parallel_for(0, sums.numel(), 1 << 16, [&](int64_t begin, int64_t end) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) dst[i] = float_bf16(src[i]);
  });
  return out;
}

}  // namespace

// x [..., in] float32 or bfloat16, blocked [out / 8, in, 8] float32 (scales None) or int8 (scales [out] float32), or
// 4- or 6-bit records [out, bytes] uint8 (scales None: lowbit_linear_cpu.cpp), bias [out] or None -> [..., out] in
// x's dtype. bfloat16 rows meet int8 weights in bfloat16 dot products where those pay (bf16_linear_cpu.cpp); else
// they are widened to float32, and the sums rounded once.
at::Tensor blocked_linear(const at::Tensor& x_in, const at::Tensor& blocked, const c10::optional<at::Tensor>& bias_in,
                          const c10::optional<at::Tensor>& scales_in) {
  const bool bf16_rows = x_in.scalar_type() == at::kBFloat16;
  if (bf16_rows && blocked.scalar_type() != at::kChar)
    return rounded(blocked_linear(widen(x_in.contiguous()), blocked, bias_in, scales_in));
  if (blocked.scalar_type() == at::kByte) {  // 4- or 6-bit records (lowbit_linear_cpu.cpp)
    TORCH_CHECK(!(scales_in.has_value() && scales_in->defined()),
                "blocked_linear: 4- and 6-bit records hold their scales");
    return lowbit_linear(x_in, blocked, bias_in);
  }
  const bool int8 = blocked.scalar_type() == at::kChar;
  const bool has_scales = scales_in.has_value() && scales_in->defined();
  TORCH_CHECK((x_in.scalar_type() == at::kFloat || bf16_rows) && (blocked.scalar_type() == at::kFloat || int8) &&
                  blocked.dim() == 3 && blocked.size(2) == 8 && x_in.size(-1) == blocked.size(1) &&
                  blocked.is_contiguous(),
              "blocked_linear: float32 or bfloat16 x [..., in] and a blocked float32 or int8 weight [out / 8, in, 8]");
  const int64_t in = blocked.size(1), panels = blocked.size(0), out_features = panels * 8;
  TORCH_CHECK(int8 == has_scales, "blocked_linear: an int8 weight takes scales, a float32 one none");
  const auto scales = has_scales ? scales_in->to(at::kFloat).contiguous() : at::Tensor();
  TORCH_CHECK(!has_scales || scales.numel() == out_features, "blocked_linear: scales must be [out]");
  const auto x = x_in.reshape({-1, in}).contiguous();
  const int64_t rows = x.size(0);
  const bool has_bias = bias_in.has_value() && bias_in->defined();
  const auto bias = has_bias ? bias_in->to(at::kFloat).contiguous() : at::Tensor();
  TORCH_CHECK(!has_bias || bias.numel() == out_features, "blocked_linear: bias must be [out]");
  auto sizes = x_in.sizes().vec();
  sizes.back() = out_features;
  const float* bp = has_bias ? bias.data_ptr<float>() : nullptr;
  if (bf16_rows) {  // int8 weights
    auto out = at::empty({rows, out_features}, x.options());
    if (int8_bf16_linear(x, blocked.data_ptr<int8_t>(), panels, bp, scales.data_ptr<float>(),
                         out.data_ptr<at::BFloat16>()))
      return out.view(sizes);
    const auto widened = widen(x);  // below 8 rows, or no bfloat16 dot products here (the one-row decode step)
    const auto sums = at::empty({rows, out_features}, widened.options());
    blocked_linear_impl<int8_t>(widened.data_ptr<float>(), rows, in, blocked.data_ptr<int8_t>(), panels, bp,
                                scales.data_ptr<float>(), sums.data_ptr<float>());
    return rounded(sums).view(sizes);
  }
  auto out = at::empty({rows, out_features}, x.options());
  if (int8) {
    blocked_linear_impl<int8_t>(x.data_ptr<float>(), rows, in, blocked.data_ptr<int8_t>(), panels, bp,
                                scales.data_ptr<float>(), out.data_ptr<float>());
  } else {
    blocked_linear_impl<float>(x.data_ptr<float>(), rows, in, blocked.data_ptr<float>(), panels, bp, nullptr,
                               out.data_ptr<float>());
  }
  return out.view(sizes);
}

// x [rows, n] bfloat16 -> out [rows, n] float32 (exactly: a bfloat16 is a float32's upper half), widened on the
// pool into memory the caller keeps. A step's logits are 32 MB in float32 at 32 rows of Gemma's 262k vocabulary:
// more than glibc serves from its heap, so a new tensor's pages were mapped and zeroed afresh every step (8,193
// faults), and Tensor::float ran on OpenMP beside the pool's spinning workers: 11-12 ms of a 75-80 ms int8 step
// (2-core AVX-512 EPYC). Into the kept buffer: 2-3 ms.
at::Tensor& to_float_out(const at::Tensor& x, at::Tensor& out) {
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && out.scalar_type() == at::kFloat && out.is_contiguous() &&
                  x.sizes() == out.sizes(),
              "to_float_out: bfloat16 x and a contiguous float32 out of its shape");
  widen_into(x.contiguous(), out.data_ptr<float>());
  return out;
}

}  // namespace ozwell

TORCH_LIBRARY_FRAGMENT(ozwell_cpu, m) {
  m.def("rms_norm(Tensor x, Tensor weight, float eps, bool gemma) -> Tensor");
  m.def("add_rms_norm(Tensor residual, Tensor x, Tensor? weight_x, Tensor? weight_out, float eps, bool gemma) "
        "-> (Tensor, Tensor)");
  m.def("qk_norm_rope(Tensor q, Tensor k, Tensor cos, Tensor sin, Tensor? q_weight, Tensor? k_weight, float eps, "
        "bool gemma, int dim) -> (Tensor, Tensor)");
  m.def("act_mul(Tensor gate, Tensor up, int act) -> Tensor");
  m.def("block_weight(Tensor weight) -> Tensor");
  m.def("blocked_linear(Tensor x, Tensor blocked, Tensor? bias, Tensor? scales=None) -> Tensor");
  m.impl("rms_norm", c10::DispatchKey::CPU, &ozwell::rms_norm);
  m.impl("add_rms_norm", c10::DispatchKey::CPU, &ozwell::add_rms_norm);
  m.impl("qk_norm_rope", c10::DispatchKey::CPU, &ozwell::qk_norm_rope);
  m.impl("act_mul", c10::DispatchKey::CPU, &ozwell::act_mul);
  m.impl("block_weight", c10::DispatchKey::CPU, &ozwell::block_weight);
  m.impl("blocked_linear", c10::DispatchKey::CPU, &ozwell::blocked_linear);
  m.def("to_float_out(Tensor x, Tensor(a!) out) -> Tensor(a!)");
  m.impl("to_float_out", c10::DispatchKey::CPU, &ozwell::to_float_out);
}
