// CUDA twin of kernels/cpu/attention.cc. Grid (n_q, head_end - head_begin), one block per
// (query, head): the query row sits in shared memory, each warp scores keys j = warp,
// warp + n_warps, ... (lanes split head_dim, so K rows are read coalesced), the scores row
// (n_kv floats of dynamic shared memory) goes through a block max and exponentials, then each
// thread owns output dimensions d and sums e_j * V[j][d] and e_j over the visible keys in key
// order (coalesced V reads). The denominator is summed in key order, not by a block reduction:
// a tree node (explicit mask) sees its ancestors at other rows than its chain does, but in the
// same order, so its logits keep the chain's bits.
#include "kernels/attention_cuda.h"
#include "kernels/cuda/reduce.cuh"
#include "kernels/cuda_check.h"

namespace dsi::kernels {
namespace {

constexpr int kThreads = 128;
constexpr int kMaxHeadDim = 256;

__global__ void attention_kernel(float* out, const float* q, const float* k, const float* v,
                                 const uint8_t* mask, int n_kv, int q_pos0, int n_heads, int group,
                                 int head_dim, int kv_stride, int head_begin, float scale) {
  extern __shared__ float scores[];  // (n_kv)
  __shared__ float qs[kMaxHeadDim];
  __shared__ float scratch[32];
  const int i = blockIdx.x;
  const int h = head_begin + blockIdx.y;
  const int g = h / group;
  const long q_off = (static_cast<long>(i) * n_heads + h) * head_dim;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) qs[d] = q[q_off + d];
  __syncthreads();

  const uint8_t* mrow = mask ? mask + static_cast<long>(i) * n_kv : nullptr;
  const int n_vis = mask ? n_kv : q_pos0 + i + 1;  // keys at and beyond n_vis are never seen
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  for (int j = warp; j < n_vis; j += n_warps) {
    float s = -INFINITY;
    if (!mrow || mrow[j]) {
      const float* kj = k + static_cast<long>(j) * kv_stride + static_cast<long>(g) * head_dim;
      float acc = 0;
      for (int d = lane; d < head_dim; d += 32) acc += qs[d] * kj[d];
      s = detail::warp_sum(acc) * scale;
    }
    if (lane == 0) scores[j] = s;
  }
  __syncthreads();

  float mx = -INFINITY;
  for (int j = threadIdx.x; j < n_vis; j += blockDim.x) mx = fmaxf(mx, scores[j]);
  mx = detail::block_max(mx, scratch);
  for (int j = threadIdx.x; j < n_vis; j += blockDim.x) {
    scores[j] = expf(scores[j] - mx);  // masked keys: exp(-inf) = 0
  }
  __syncthreads();

  const float* vg = v + static_cast<long>(g) * head_dim;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float acc = 0, sum = 0;
    for (int j = 0; j < n_vis; ++j) {
      const float e = scores[j];
      if (e != 0.0f) {
        acc += e * vg[static_cast<long>(j) * kv_stride + d];
        sum += e;
      }
    }
    out[q_off + d] = acc * (1.0f / sum);
  }
}

// Static shared memory of attention_kernel: qs and scratch.
constexpr size_t kStaticSmem = (kMaxHeadDim + 32) * sizeof(float);

}  // namespace

int attention_max_kv(int device) {
  int optin = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return static_cast<int>((static_cast<size_t>(optin) - kStaticSmem) / sizeof(float));
}

void attention_cuda(float* out, const float* q, const float* k, const float* v, const uint8_t* mask,
                    int n_q, int n_kv, int q_pos0, int n_heads, int n_kv_heads, int head_dim,
                    int kv_stride, int head_begin, int head_end, cudaStream_t stream) {
  if (n_q <= 0 || head_end <= head_begin) return;
  if (head_dim > kMaxHeadDim) {
    throw std::invalid_argument("attention_cuda: head_dim " + std::to_string(head_dim) + " > " +
                                std::to_string(kMaxHeadDim));
  }
  const size_t smem = static_cast<size_t>(n_kv) * sizeof(float);
  // Static and dynamic shared memory together beyond the default 48 KiB need the opt-in.
  if (smem + kStaticSmem > 48 * 1024) {
    // Host-side queries only (no synchronisation): refuse a context the scores row cannot hold.
    int dev = 0, optin = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    if (smem + kStaticSmem > static_cast<size_t>(optin)) {
      throw std::invalid_argument("attention_cuda: n_kv " + std::to_string(n_kv) +
                                  " needs more shared memory than the device has per block (" +
                                  std::to_string(optin) + " bytes)");
    }
    // The device's whole opt-in, set once for any size: a host-side attribute, no sync, and no
    // caller can lower it under another's launch.
    CUDA_CHECK(cudaFuncSetAttribute(attention_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    optin - static_cast<int>(kStaticSmem)));
  }
  const dim3 grid(n_q, head_end - head_begin);
  attention_kernel<<<grid, kThreads, smem, stream>>>(
      out, q, k, v, mask, n_kv, q_pos0, n_heads, n_heads / n_kv_heads, head_dim, kv_stride,
      head_begin, 1.0f / sqrtf(static_cast<float>(head_dim)));
  CUDA_CHECK_LAUNCH("attention_kernel");
}

}  // namespace dsi::kernels
