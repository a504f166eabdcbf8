// CUDA twin of rmsnorm_cpu (kernels/rmsnorm.h): same contract, device pointers, never syncs.
#pragma once

#include <cuda_runtime.h>

namespace dsi::kernels {
// The mean of squares is accumulated in float (the CPU reference uses double).
void rmsnorm_cuda(float* out, const float* x, const float* w, int n, int dim, float eps,
                  cudaStream_t stream);
}  // namespace dsi::kernels
