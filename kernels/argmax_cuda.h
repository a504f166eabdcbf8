// CUDA twin of argmax_cpu (kernels/argmax.h): same contract, device pointers, never syncs.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace dsi::kernels {
void argmax_cuda(int32_t* out, const float* x, int n, int vocab, cudaStream_t stream);
}  // namespace dsi::kernels
