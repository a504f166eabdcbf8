// CUDA twin of kernels/cpu/swiglu.cc: elementwise, grid-stride.
#include "kernels/cuda_check.h"
#include "kernels/swiglu_cuda.h"

namespace dsi::kernels {
namespace {

__global__ void swiglu_kernel(float* out, const float* gate, const float* up, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = gate[i];
    out[i] = g / (1.0f + expf(-g)) * up[i];
  }
}

}  // namespace

void swiglu_cuda(float* out, const float* gate, const float* up, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  constexpr int kThreads = 256;
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  swiglu_kernel<<<static_cast<unsigned>(blocks < 65536 ? blocks : 65536), kThreads, 0, stream>>>(
      out, gate, up, n);
  CUDA_CHECK_LAUNCH("swiglu_kernel");
}

}  // namespace dsi::kernels
