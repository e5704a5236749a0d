// The CPU ops that one decode layer (decode_layer_cpu.cpp) calls directly, without the dispatcher:
// defined in fused_cpu.cpp, lowbit_linear_cpu.cpp and paged_decode_cpu.cpp, registered there as torch.ops.ozwell_cpu.*.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace ozwell {

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps, bool gemma);
std::tuple<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& residual, const at::Tensor& x,
                                                const c10::optional<at::Tensor>& w_x,
                                                const c10::optional<at::Tensor>& w_out, double eps, bool gemma);
std::tuple<at::Tensor, at::Tensor> qk_norm_rope(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos,
                                                const at::Tensor& sin, const c10::optional<at::Tensor>& q_w,
                                                const c10::optional<at::Tensor>& k_w, double eps, bool gemma,
                                                int64_t dim);
at::Tensor act_mul(const at::Tensor& gate, const at::Tensor& up, int64_t act);
at::Tensor blocked_linear(const at::Tensor& x, const at::Tensor& blocked, const c10::optional<at::Tensor>& bias,
                          const c10::optional<at::Tensor>& scales);
at::Tensor lowbit_linear(const at::Tensor& x, const at::Tensor& records, const c10::optional<at::Tensor>& bias);
at::Tensor paged_decode(const at::Tensor& query, const at::Tensor& k_cache, const at::Tensor& v_cache,
                        const at::Tensor& tables, const at::Tensor& starts, const at::Tensor& lengths,
                        int64_t block_size, double scale);

}  // namespace ozwell
