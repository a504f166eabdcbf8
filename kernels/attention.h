// Grouped-query scaled dot-product attention of a block of queries over a KV cache, with the
// causal rule or an explicit visibility mask (tree attention). CPU reference; a CUDA twin will
// take the same arguments plus a stream.
#pragma once

#include <cstdint>

namespace dsi::kernels {

// q, out: (n_q, n_heads*head_dim) row-major, q already rotated; k, v: (n_kv, kv_stride) with
// KV head g in columns [g*head_dim, (g+1)*head_dim). Query head h reads KV head
// h / (n_heads / n_kv_heads). Scores are scaled by 1/sqrt(head_dim).
// Visibility: with mask == nullptr query i sits at position q_pos0 + i and sees keys
// 0 .. q_pos0 + i (causal; q_pos0 + n_q <= n_kv). With a mask (n_q, n_kv), query i sees key j
// iff mask[i*n_kv + j] != 0 and q_pos0 is unused; every query must see at least one key.
// Only heads [head_begin, head_end) are computed, so callers can split heads over threads.
void attention_cpu(float* out, const float* q, const float* k, const float* v, const uint8_t* mask,
                   int n_q, int n_kv, int q_pos0, int n_heads, int n_kv_heads, int head_dim,
                   int kv_stride, int head_begin, int head_end);

}  // namespace dsi::kernels
