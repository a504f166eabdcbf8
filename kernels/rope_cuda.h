// CUDA twin of rope_cpu (kernels/rope.h): both pair layouts, pos is a device array.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/rope.h"

namespace dsi::kernels {
void rope_cuda(float* x, const int32_t* pos, int n, int n_heads, int head_dim, int rot_dim,
               float freq_base, RopeLayout layout, cudaStream_t stream);
}  // namespace dsi::kernels
