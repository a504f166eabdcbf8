// CUDA twin of softmax_cpu (kernels/softmax.h): rows in place, -inf entries get 0.
#pragma once

#include <cuda_runtime.h>

namespace dsi::kernels {
void softmax_cuda(float* x, int n, int dim, cudaStream_t stream);
}  // namespace dsi::kernels
