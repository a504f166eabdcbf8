// CUDA twin of kernels/cpu/argmax.cc: one block per row, a shared-memory tree reduction.
#include <cuda_runtime.h>

#include "kernels/argmax_cuda.h"

namespace dsi::kernels {
namespace {

constexpr int kThreads = 256;

__global__ void argmax_kernel(int32_t* out, const float* x, int vocab) {
  __shared__ float best_v[kThreads];
  __shared__ int best_i[kThreads];
  const float* row = x + static_cast<long>(blockIdx.x) * vocab;
  float v = -INFINITY;
  int idx = 0x7fffffff;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
    if (row[i] > v) {
      v = row[i];
      idx = i;
    }
  }
  best_v[threadIdx.x] = v;
  best_i[threadIdx.x] = idx;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) {
      const float ov = best_v[threadIdx.x + s];
      const int oi = best_i[threadIdx.x + s];
      // Ties go to the lowest index, as in the CPU reference.
      if (ov > best_v[threadIdx.x] || (ov == best_v[threadIdx.x] && oi < best_i[threadIdx.x])) {
        best_v[threadIdx.x] = ov;
        best_i[threadIdx.x] = oi;
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = best_i[0];
}

}  // namespace

void argmax_cuda(int32_t* out, const float* x, int n, int vocab, cudaStream_t stream) {
  if (n > 0) argmax_kernel<<<n, kThreads, 0, stream>>>(out, x, vocab);
}

}  // namespace dsi::kernels
