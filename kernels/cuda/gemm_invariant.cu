// Batch-invariant dense layer behind kernels/gemm_cuda.h (gemm_invariant_cuda).
//
// One warp computes one output row o for a tile of up to T tokens. Lane l walks the input in
// chunks of VEC elements, l*VEC, l*VEC + 32*VEC, ..., multiplying each chunk into one FP32
// accumulator per token with fused multiply-adds in element order; the 32 lane sums are then
// combined by the same xor butterfly every time, and lane 0's result is stored (+ bias). So the
// sum order of y[r][o] is fixed by (in, VEC) alone: not by n, T, the tile r falls in, the grid
// or the device's load. VEC is 16 bytes of W when `in` is a multiple of it (always so for
// llama shapes; buffers are cudaMalloc'd), else 1. Tokens of a tile share each weight load;
// tiles are blockIdx.y, so for long prefills the weight rows come from L2 after the first tile.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/cuda_check.h"
#include "kernels/gemm_cuda.h"

namespace dsi::kernels {
namespace {

constexpr int kWarps = 4;  // output rows per block

// VEC consecutive elements of W at p as floats (exact widening).
template <int VEC, typename W>
__device__ __forceinline__ void load_f32(const W* __restrict__ p, float (&out)[VEC]) {
  if constexpr (VEC == 1) {
    if constexpr (std::is_same_v<W, __half>) {
      out[0] = __half2float(*p);
    } else if constexpr (std::is_same_v<W, __nv_bfloat16>) {
      out[0] = __bfloat162float(*p);
    } else {
      out[0] = *p;
    }
  } else {
    static_assert(VEC * sizeof(W) == 16, "vector loads are 16 bytes");
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    if constexpr (std::is_same_v<W, float>) {
      out[0] = __uint_as_float(raw.x);
      out[1] = __uint_as_float(raw.y);
      out[2] = __uint_as_float(raw.z);
      out[3] = __uint_as_float(raw.w);
    } else {
      const unsigned words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const unsigned short lo = static_cast<unsigned short>(words[k] & 0xffffu);
        const unsigned short hi = static_cast<unsigned short>(words[k] >> 16);
        if constexpr (std::is_same_v<W, __half>) {
          out[2 * k] = __half2float(__ushort_as_half(lo));
          out[2 * k + 1] = __half2float(__ushort_as_half(hi));
        } else {
          out[2 * k] = __bfloat162float(__ushort_as_bfloat16(lo));
          out[2 * k + 1] = __bfloat162float(__ushort_as_bfloat16(hi));
        }
      }
    }
  }
}

template <int T, int VEC, typename W>
__global__ void __launch_bounds__(kWarps * 32)
    gemm_rows_kernel(float* __restrict__ y, const W* __restrict__ x, const W* __restrict__ w,
                     const float* __restrict__ bias, int n, int in, int out) {
  const int lane = threadIdx.x & 31;
  const int o = blockIdx.x * kWarps + (threadIdx.x >> 5);
  if (o >= out) return;  // o is the same for the whole warp: the shuffles below stay full-warp
  const int r0 = blockIdx.y * T;
  const int nt = min(T, n - r0);
  const W* wr = w + static_cast<size_t>(o) * in;
  const W* xr = x + static_cast<size_t>(r0) * in;
  float acc[T];
#pragma unroll
  for (int t = 0; t < T; ++t) acc[t] = 0.0f;
    // Unrolled so that several weight loads are in flight per lane (a decode of a narrow matrix
    // has few warps per SM); unrolling changes no sum order.
#pragma unroll 4
  for (int i = lane * VEC; i < in; i += 32 * VEC) {
    float wf[VEC];
    load_f32<VEC>(wr + i, wf);
#pragma unroll
    for (int t = 0; t < T; ++t) {
      if (t < nt) {
        float xf[VEC];
        load_f32<VEC>(xr + static_cast<size_t>(t) * in + i, xf);
#pragma unroll
        for (int j = 0; j < VEC; ++j) acc[t] = __fmaf_rn(wf[j], xf[j], acc[t]);
      }
    }
  }
#pragma unroll
  for (int t = 0; t < T; ++t) {
    float v = acc[t];
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, off));
    if (lane == 0 && t < nt) {
      y[static_cast<size_t>(r0 + t) * out + o] = bias != nullptr ? __fadd_rn(v, bias[o]) : v;
    }
  }
}

template <int T, int VEC, typename W>
void launch(float* y, const W* x, const W* w, const float* bias, int n, int in, int out,
            cudaStream_t stream) {
  const dim3 grid((out + kWarps - 1) / kWarps, (n + T - 1) / T);
  gemm_rows_kernel<T, VEC, W><<<grid, kWarps * 32, 0, stream>>>(y, x, w, bias, n, in, out);
  CUDA_CHECK_LAUNCH("gemm_rows_kernel");
}

template <int VEC, typename W>
void launch_tiles(float* y, const W* x, const W* w, const float* bias, int n, int in, int out,
                  cudaStream_t stream) {
  // The tile size only decides which tokens share a weight load, never a sum order.
  if (n == 1) return launch<1, VEC>(y, x, w, bias, n, in, out, stream);
  if (n == 2) return launch<2, VEC>(y, x, w, bias, n, in, out, stream);
  if (n <= 4) return launch<4, VEC>(y, x, w, bias, n, in, out, stream);
  launch<8, VEC>(y, x, w, bias, n, in, out, stream);
}

template <typename W>
void gemm_typed(float* y, const void* xv, const void* wv, const float* bias, int n, int in, int out,
                cudaStream_t stream) {
  const auto* x = static_cast<const W*>(xv);
  const auto* w = static_cast<const W*>(wv);
  constexpr int kVec = 16 / sizeof(W);
  const bool aligned =
      reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0;
  if (in % kVec == 0 && aligned) {
    launch_tiles<kVec>(y, x, w, bias, n, in, out, stream);
  } else {
    launch_tiles<1>(y, x, w, bias, n, in, out, stream);
  }
}

}  // namespace

void gemm_invariant_cuda(float* y, const void* x, const void* w, const float* bias, GemmType type,
                         int n, int in, int out, cudaStream_t stream) {
  if (n <= 0 || out <= 0) return;
  if (in <= 0) throw std::invalid_argument("gemm_invariant_cuda: in must be positive");
  if ((n + 7) / 8 > 65535) {
    throw std::invalid_argument("gemm_invariant_cuda: " + std::to_string(n) +
                                " rows exceed the grid (at most 524280)");
  }
  switch (type) {
    case GemmType::kF32:
      return gemm_typed<float>(y, x, w, bias, n, in, out, stream);
    case GemmType::kF16:
      return gemm_typed<__half>(y, x, w, bias, n, in, out, stream);
    case GemmType::kBF16:
      return gemm_typed<__nv_bfloat16>(y, x, w, bias, n, in, out, stream);
  }
  throw std::invalid_argument("gemm_invariant_cuda: unknown GemmType " +
                              std::to_string(static_cast<int>(type)));
}

}  // namespace dsi::kernels
