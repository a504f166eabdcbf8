// CUDA twin of kernels/cpu/rmsnorm.cc: one block per row, a block-wide sum of squares.
#include "kernels/cuda/reduce.cuh"
#include "kernels/cuda_check.h"
#include "kernels/rmsnorm_cuda.h"

namespace dsi::kernels {
namespace {

constexpr int kThreads = 256;

__global__ void rmsnorm_kernel(float* out, const float* x, const float* w, int dim, float eps) {
  __shared__ float scratch[32];
  const float* xr = x + static_cast<long>(blockIdx.x) * dim;
  float* yr = out + static_cast<long>(blockIdx.x) * dim;
  float ss = 0;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
  ss = detail::block_sum(ss, scratch);
  const float scale = rsqrtf(ss / dim + eps);
  for (int i = threadIdx.x; i < dim; i += blockDim.x) yr[i] = xr[i] * scale * w[i];
}

}  // namespace

void rmsnorm_cuda(float* out, const float* x, const float* w, int n, int dim, float eps,
                  cudaStream_t stream) {
  if (n <= 0) return;
  rmsnorm_kernel<<<n, kThreads, 0, stream>>>(out, x, w, dim, eps);
  CUDA_CHECK_LAUNCH("rmsnorm_kernel");
}

}  // namespace dsi::kernels
