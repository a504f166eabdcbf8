// CUDA twin of attention_cpu (kernels/attention.h): same arguments (device pointers; mask is a
// device (n_q, n_kv) array or nullptr for the causal rule) plus a stream. One block per
// (query, head) holds that row's scores in shared memory, so n_kv is bounded by the shared
// memory of the device (about 56k keys on A100/H100); a simple, correct kernel for verify and
// decode, not a flash-attention.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace dsi::kernels {
// The most keys attention_cuda can attend to on `device` (its scores row in shared memory).
int attention_max_kv(int device);

void attention_cuda(float* out, const float* q, const float* k, const float* v, const uint8_t* mask,
                    int n_q, int n_kv, int q_pos0, int n_heads, int n_kv_heads, int head_dim,
                    int kv_stride, int head_begin, int head_end, cudaStream_t stream);
}  // namespace dsi::kernels
