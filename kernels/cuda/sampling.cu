// CUDA twins of kernels/cpu/sampling.cc.
//
// probs_from_logits_cuda, per row:
//   1. softmax_kernel (one block per row): max, e_i = exp((l_i - max) / T) rounded to float,
//      their sum in double, p_i = float(e_i / sum): the CPU's operations in the CPU's types.
//      exp is evaluated in double and rounded once to float, so e_i is the correctly rounded
//      value that glibc's expf (< 0.502 ulp) also returns except in rare cases; p_i then
//      matches the CPU bit for bit unless a rounding lands differently (sum order).
//      Without a cut it writes p and is done.
//   2. With a cut, it writes instead a 64-bit sort key per element, (row << 32) | ~bits(p_i)
//      (p_i >= 0, so its bits order like the float), and its column index. One stable
//      device-wide radix sort (cub::DeviceRadixSort::SortPairs over the row bits and the 32
//      key bits) then orders every row by p descending with ties in ascending index, which is
//      the order of the CPU's std::stable_sort.
//   3. cut_kernel (one block per row) walks the sorted row in chunks with a block-wide
//      inclusive scan in double: keep = min(top_k, first n with mass(n) >= top_p), where the
//      element that crosses top_p is kept; the kept mass is the scan at keep - 1. Then every
//      element of the row is written (each index occurs once in the sorted order): p / kept
//      for the first `keep`, 0 for the rest.
// sample_cdf_cuda: one block; the total in double, then a chunked block scan of the positive
// weights for the first index whose cumulative weight exceeds u * total.
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_radix_sort.cuh>
#include <stdexcept>
#include <string>

#include "kernels/cuda/reduce.cuh"
#include "kernels/cuda_check.h"
#include "kernels/sampling_cuda.h"

namespace dsi::kernels {
namespace {

constexpr int kThreads = 1024;     // softmax_kernel
constexpr int kScanThreads = 512;  // the chunked scans (cut_kernel, sample_cdf_kernel)
constexpr int kItems = 8;          // per thread and chunk of the scans: 4096 elements a chunk

struct MinOp {
  __device__ int operator()(int a, int b) const { return b < a ? b : a; }
};
struct MaxOp {
  __device__ int operator()(int a, int b) const { return b > a ? b : a; }
};

__device__ __forceinline__ float key_prob(uint64_t key) {
  return __uint_as_float(~static_cast<uint32_t>(key));
}

// Step 1 (and the keys of step 2 when `keys` is non-null).
__global__ void __launch_bounds__(kThreads)
    softmax_kernel(float* probs, uint64_t* keys, int32_t* cols, const float* logits, int vocab,
                   float temperature) {
  using Reduce = cub::BlockReduce<double, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  __shared__ float red[32];
  __shared__ double s_sum;
  const long off = static_cast<long>(blockIdx.x) * vocab;
  const float* l = logits + off;
  float mx = -INFINITY;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) mx = fmaxf(mx, l[i]);
  mx = detail::block_max(mx, red);
  double sum = 0;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float e = static_cast<float>(exp(static_cast<double>((l[i] - mx) / temperature)));
    sum += e;
  }
  sum = Reduce(tmp).Sum(sum);
  if (threadIdx.x == 0) s_sum = sum;
  __syncthreads();
  sum = s_sum;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float e = static_cast<float>(exp(static_cast<double>((l[i] - mx) / temperature)));
    const float p = static_cast<float>(e / sum);
    if (keys == nullptr) {
      probs[off + i] = p;
    } else {
      keys[off + i] = (static_cast<uint64_t>(blockIdx.x) << 32) | ~__float_as_uint(p);
      cols[off + i] = i;
    }
  }
}

// Step 3. keep_k: top_k, or vocab without a top-k cut; top_p: +inf without a top-p cut.
__global__ void __launch_bounds__(kScanThreads)
    cut_kernel(float* probs, const uint64_t* keys, const int32_t* cols, int vocab, int keep_k,
               double top_p) {
  using Scan = cub::BlockScan<double, kScanThreads>;
  using Reduce = cub::BlockReduce<int, kScanThreads>;
  __shared__ union {
    typename Scan::TempStorage scan;
    typename Reduce::TempStorage reduce;
  } tmp;
  __shared__ int s_first;
  __shared__ double s_kept;
  const long off = static_cast<long>(blockIdx.x) * vocab;
  const uint64_t* k = keys + off;
  const int32_t* c = cols + off;
  int keep = keep_k;
  double running = 0;
  for (int base = 0; base < keep; base += kScanThreads * kItems) {
    const int pos0 = base + threadIdx.x * kItems;
    double v[kItems], incl[kItems], chunk;
#pragma unroll
    for (int j = 0; j < kItems; ++j) v[j] = pos0 + j < keep ? key_prob(k[pos0 + j]) : 0.0;
    __syncthreads();  // tmp and s_first of the previous chunk are no longer read
    Scan(tmp.scan).InclusiveSum(v, incl, chunk);
    int first = INT_MAX;
#pragma unroll
    for (int j = kItems - 1; j >= 0; --j) {
      if (pos0 + j < keep && running + incl[j] >= top_p) first = pos0 + j;
    }
    __syncthreads();
    first = Reduce(tmp.reduce).Reduce(first, MinOp{});
    if (threadIdx.x == 0) s_first = first;
    __syncthreads();
    if (s_first != INT_MAX) keep = s_first + 1;
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      if (pos0 + j == keep - 1) s_kept = running + incl[j];
    }
    running += chunk;
  }
  __syncthreads();
  const double kept = s_kept;
  for (int r = threadIdx.x; r < vocab; r += blockDim.x) {
    probs[off + c[r]] = r < keep ? static_cast<float>(key_prob(k[r]) / kept) : 0.0f;
  }
}

__global__ void __launch_bounds__(kScanThreads)
    sample_cdf_kernel(int32_t* out, const float* w, int vocab, double u) {
  using Scan = cub::BlockScan<double, kScanThreads>;
  using ReduceD = cub::BlockReduce<double, kScanThreads>;
  using ReduceI = cub::BlockReduce<int, kScanThreads>;
  __shared__ union {
    typename Scan::TempStorage scan;
    typename ReduceD::TempStorage reduce_d;
    typename ReduceI::TempStorage reduce_i;
  } tmp;
  __shared__ double s_total;
  __shared__ int s_int;
  // The total counts every weight, as the CPU's does; the cumulative sum only positive ones.
  double total = 0;
  int last = -1;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
    total += w[i];
    if (w[i] > 0) last = i;
  }
  total = ReduceD(tmp.reduce_d).Sum(total);
  if (threadIdx.x == 0) s_total = total;
  __syncthreads();
  last = ReduceI(tmp.reduce_i).Reduce(last, MaxOp{});
  if (threadIdx.x == 0) s_int = last;
  __syncthreads();
  last = s_int;
  const double target = u * s_total;
  double running = 0;
  for (int base = 0; base < vocab; base += kScanThreads * kItems) {
    const int pos0 = base + threadIdx.x * kItems;
    double v[kItems], incl[kItems], chunk;
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      const float x = pos0 + j < vocab ? w[pos0 + j] : 0.0f;
      v[j] = x > 0 ? x : 0.0;
    }
    __syncthreads();  // tmp and s_int are no longer read
    Scan(tmp.scan).InclusiveSum(v, incl, chunk);
    int first = INT_MAX;
#pragma unroll
    for (int j = kItems - 1; j >= 0; --j) {
      if (v[j] > 0 && running + incl[j] > target) first = pos0 + j;
    }
    __syncthreads();
    first = ReduceI(tmp.reduce_i).Reduce(first, MinOp{});
    if (threadIdx.x == 0) s_int = first;
    __syncthreads();
    if (s_int != INT_MAX) {
      if (threadIdx.x == 0) *out = s_int;
      return;
    }
    running += chunk;
  }
  if (threadIdx.x == 0) *out = last;  // rounding left u * total at the very end
}

size_t align_up(size_t n) {
  return (n + 255) & ~size_t{255};
}

}  // namespace

void probs_from_logits_cuda(float* probs, const float* logits, int n_rows, int vocab,
                            float temperature, int top_k, float top_p, cudaStream_t stream) {
  if (!(temperature > 0)) {
    throw std::invalid_argument("probs_from_logits_cuda: temperature must be > 0, got " +
                                std::to_string(temperature));
  }
  if (n_rows <= 0 || vocab <= 0) return;
  const int64_t n = int64_t{n_rows} * vocab;
  if (n >= (int64_t{1} << 31)) {
    throw std::invalid_argument("probs_from_logits_cuda: n_rows * vocab must be < 2^31");
  }
  const bool cut_k = top_k > 0 && top_k < vocab;
  const bool cut_p = top_p < 1.0f;
  if (!cut_k && !cut_p) {
    softmax_kernel<<<n_rows, kThreads, 0, stream>>>(probs, nullptr, nullptr, logits, vocab,
                                                    temperature);
    CUDA_CHECK_LAUNCH("softmax_kernel");
    return;
  }
  int row_bits = 0;
  while ((int64_t{1} << row_bits) < n_rows) ++row_bits;
  const int end_bit = 32 + row_bits;
  const int num = static_cast<int>(n);
  size_t sort_bytes = 0;
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      nullptr, sort_bytes, static_cast<uint64_t*>(nullptr), static_cast<uint64_t*>(nullptr),
      static_cast<int32_t*>(nullptr), static_cast<int32_t*>(nullptr), num, 0, end_bit, stream));
  const size_t key_bytes = align_up(sizeof(uint64_t) * n),
               col_bytes = align_up(sizeof(int32_t) * n);
  char* buf = nullptr;
  CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&buf),
                             2 * key_bytes + 2 * col_bytes + align_up(sort_bytes), stream));
  auto* keys_in = reinterpret_cast<uint64_t*>(buf);
  auto* keys_out = reinterpret_cast<uint64_t*>(buf + key_bytes);
  auto* cols_in = reinterpret_cast<int32_t*>(buf + 2 * key_bytes);
  auto* cols_out = reinterpret_cast<int32_t*>(buf + 2 * key_bytes + col_bytes);
  void* sort_tmp = buf + 2 * key_bytes + 2 * col_bytes;
  try {
    softmax_kernel<<<n_rows, kThreads, 0, stream>>>(probs, keys_in, cols_in, logits, vocab,
                                                    temperature);
    CUDA_CHECK_LAUNCH("softmax_kernel");
    CUDA_CHECK(cub::DeviceRadixSort::SortPairs(sort_tmp, sort_bytes, keys_in, keys_out, cols_in,
                                               cols_out, num, 0, end_bit, stream));
    cut_kernel<<<n_rows, kScanThreads, 0, stream>>>(probs, keys_out, cols_out, vocab,
                                                    cut_k ? top_k : vocab,
                                                    cut_p ? static_cast<double>(top_p) : INFINITY);
    CUDA_CHECK_LAUNCH("cut_kernel");
  } catch (...) {
    (void)cudaFreeAsync(buf, stream);  // best effort: the error being thrown is the one to report
    throw;
  }
  CUDA_CHECK(cudaFreeAsync(buf, stream));
}

void sample_cdf_cuda(int32_t* out, const float* weights, int vocab, double u, cudaStream_t stream) {
  sample_cdf_kernel<<<1, kScanThreads, 0, stream>>>(out, weights, vocab, u);
  CUDA_CHECK_LAUNCH("sample_cdf_kernel");
}

}  // namespace dsi::kernels
