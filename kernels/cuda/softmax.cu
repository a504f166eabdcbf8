// CUDA twin of kernels/cpu/softmax.cc: one block per row, max then sum, in place.
#include "kernels/cuda/reduce.cuh"
#include "kernels/cuda_check.h"
#include "kernels/softmax_cuda.h"

namespace dsi::kernels {
namespace {

constexpr int kThreads = 256;

__global__ void softmax_kernel(float* x, int dim) {
  __shared__ float scratch[32];
  float* row = x + static_cast<long>(blockIdx.x) * dim;
  float mx = -INFINITY;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) mx = fmaxf(mx, row[i]);
  mx = detail::block_max(mx, scratch);
  float sum = 0;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) {
    const float e = expf(row[i] - mx);  // exp(-inf) = 0
    row[i] = e;
    sum += e;
  }
  sum = detail::block_sum(sum, scratch);
  const float inv = 1.0f / sum;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) row[i] *= inv;
}

}  // namespace

void softmax_cuda(float* x, int n, int dim, cudaStream_t stream) {
  if (n <= 0) return;
  softmax_kernel<<<n, kThreads, 0, stream>>>(x, dim);
  CUDA_CHECK_LAUNCH("softmax_kernel");
}

}  // namespace dsi::kernels
