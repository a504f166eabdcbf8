// CUDA twin of kernels/cpu/argmax.cc: one block per row, a shared-memory tree reduction that
// picks exactly the index argmax_cpu picks (kernels/argmax.h), ties and NaNs included.
#include <cuda_runtime.h>

#include <climits>

#include "kernels/argmax_cuda.h"
#include "kernels/cuda_check.h"

namespace dsi::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kNone = INT_MAX;  // a thread (or subtree) that has seen no non-NaN value

// (v, i) beats (bv, bi): larger value, or equal value at a lower index; an empty candidate
// (i == kNone) never beats anything and is beaten by any non-empty one.
__device__ bool beats(float v, int i, float bv, int bi) {
  if (i == kNone) return false;
  if (bi == kNone) return true;
  return v > bv || (v == bv && i < bi);
}

__global__ void argmax_kernel(int32_t* out, const float* x, int vocab) {
  __shared__ float best_v[kThreads];
  __shared__ int best_i[kThreads];
  const float* row = x + static_cast<long>(blockIdx.x) * vocab;
  // argmax_cpu keeps index 0 unless a later value compares greater; with row[0] NaN none
  // does. Otherwise it returns the first maximum of the non-NaN values (a NaN never compares
  // greater, and row[best] is never NaN once best moved). -inf is an ordinary value here, so
  // a row of -inf gives 0 as on the CPU.
  float v = 0;
  int idx = kNone;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float r = row[i];
    if (!isnan(r) && (idx == kNone || r > v)) {  // indices rise: the first maximum stays
      v = r;
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
      if (beats(ov, oi, best_v[threadIdx.x], best_i[threadIdx.x])) {
        best_v[threadIdx.x] = ov;
        best_i[threadIdx.x] = oi;
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = (isnan(row[0]) || best_i[0] == kNone) ? 0 : best_i[0];
}

}  // namespace

void argmax_cuda(int32_t* out, const float* x, int n, int vocab, cudaStream_t stream) {
  if (n <= 0 || vocab <= 0) return;
  argmax_kernel<<<n, kThreads, 0, stream>>>(out, x, vocab);
  CUDA_CHECK_LAUNCH("argmax_kernel");
}

}  // namespace dsi::kernels
