// CUDA twin of swiglu_cpu (kernels/swiglu.h).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace dsi::kernels {
void swiglu_cuda(float* out, const float* gate, const float* up, int64_t n, cudaStream_t stream);
}  // namespace dsi::kernels
