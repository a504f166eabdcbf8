// CUDA twin of kernels/cpu/dequant.cc (whole tensors, and rows gathered by token id for the
// embedding lookup): one thread per output element. Blocks are read through
// their 2-byte-aligned structs (kernels/ggml_type.h), so any GGUF tensor offset works.
#include <cuda_fp16.h>

#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/cuda_check.h"
#include "kernels/dequant_cuda.h"

namespace dsi::kernels {
namespace {

__device__ __forceinline__ float half_bits_to_float(uint16_t h) {
  return __half2float(__ushort_as_half(h));
}

// Code of element j < 32 in a Q4_0/Q4_1/Q5_0/Q5_1 nibble array: byte j % 16 holds element j
// in its low nibble, j + 16 in its high one.
__device__ __forceinline__ int nibble32(const uint8_t* qs, int j) {
  return j < 16 ? (qs[j] & 0x0f) : (qs[j - 16] >> 4);
}

// Scale and min of sub-block s < 8 of a Q4_K/Q5_K super-block (kernels/ggml_type.h).
__device__ __forceinline__ void scale_min_k4(const uint8_t* sc, int s, int* scale, int* min) {
  if (s < 4) {
    *scale = sc[s] & 63;
    *min = sc[s + 4] & 63;
  } else {
    *scale = (sc[s + 4] & 0x0f) | ((sc[s - 4] >> 6) << 4);
    *min = (sc[s + 4] >> 4) | ((sc[s] >> 6) << 4);
  }
}

// Low 2 bits of element e in a Q2_K/Q3_K code array.
__device__ __forceinline__ int code2(const uint8_t* qs, int e) {
  return (qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
}

// Element i of a tensor of type kType. The arithmetic is the CPU reference's
// (kernels/cpu/dequant.cc), operation for operation; the explicit round-to-nearest intrinsics
// keep nvcc from fusing a product and a sum, so the results are bit-identical to it.
template <GgmlType kType>
__device__ __forceinline__ float load(const void* src, int64_t i) {
  if constexpr (kType == GgmlType::F32) {
    return static_cast<const float*>(src)[i];
  } else if constexpr (kType == GgmlType::F16) {
    return half_bits_to_float(static_cast<const uint16_t*>(src)[i]);
  } else if constexpr (kType == GgmlType::BF16) {
    return __uint_as_float(static_cast<uint32_t>(static_cast<const uint16_t*>(src)[i]) << 16);
  } else if constexpr (kType == GgmlType::Q8_0) {
    const BlockQ8_0& b = static_cast<const BlockQ8_0*>(src)[i / 32];
    return half_bits_to_float(b.d) * b.qs[i % 32];
  } else if constexpr (kType == GgmlType::Q4_0) {
    const BlockQ4_0& b = static_cast<const BlockQ4_0*>(src)[i / 32];
    return (nibble32(b.qs, static_cast<int>(i % 32)) - 8) * half_bits_to_float(b.d);
  } else if constexpr (kType == GgmlType::Q4_1) {
    const BlockQ4_1& b = static_cast<const BlockQ4_1*>(src)[i / 32];
    const int q = nibble32(b.qs, static_cast<int>(i % 32));
    return __fadd_rn(__fmul_rn(static_cast<float>(q), half_bits_to_float(b.d)),
                     half_bits_to_float(b.m));
  } else if constexpr (kType == GgmlType::Q5_0 || kType == GgmlType::Q5_1) {
    using Block = std::conditional_t<kType == GgmlType::Q5_0, BlockQ5_0, BlockQ5_1>;
    const Block& b = static_cast<const Block*>(src)[i / 32];
    const int j = static_cast<int>(i % 32);
    const int q = nibble32(b.qs, j) | (((b.qh[j / 8] >> (j % 8)) & 1) << 4);
    if constexpr (kType == GgmlType::Q5_0) {
      return __fmul_rn(static_cast<float>(q - 16), half_bits_to_float(b.d));
    } else {
      return __fadd_rn(__fmul_rn(static_cast<float>(q), half_bits_to_float(b.d)),
                       half_bits_to_float(b.m));
    }
  } else if constexpr (kType == GgmlType::Q2_K) {
    const BlockQ2_K& b = static_cast<const BlockQ2_K*>(src)[i / 256];
    const int e = static_cast<int>(i % 256);
    const uint8_t sc = b.scales[e / 16];
    const float dl = __fmul_rn(half_bits_to_float(b.d), static_cast<float>(sc & 0x0f));
    const float ml = __fmul_rn(half_bits_to_float(b.dmin), static_cast<float>(sc >> 4));
    return __fsub_rn(__fmul_rn(dl, static_cast<float>(code2(b.qs, e))), ml);
  } else if constexpr (kType == GgmlType::Q3_K) {
    const BlockQ3_K& b = static_cast<const BlockQ3_K*>(src)[i / 256];
    const int e = static_cast<int>(i % 256), s = e / 16;
    const int lo = s < 8 ? (b.scales[s] & 0x0f) : (b.scales[s - 8] >> 4);
    const int hi = (b.scales[8 + s % 4] >> (2 * (s / 4))) & 3;
    const float dl = __fmul_rn(half_bits_to_float(b.d), static_cast<float>((lo | (hi << 4)) - 32));
    const bool hbit = (b.hmask[e % 32] >> (e / 32)) & 1;
    return __fmul_rn(dl, static_cast<float>(code2(b.qs, e) - (hbit ? 0 : 4)));
  } else if constexpr (kType == GgmlType::Q4_K || kType == GgmlType::Q5_K) {
    using Block = std::conditional_t<kType == GgmlType::Q4_K, BlockQ4_K, BlockQ5_K>;
    const Block& b = static_cast<const Block*>(src)[i / 256];
    const int e = static_cast<int>(i % 256);
    int scale = 0, min = 0;
    scale_min_k4(b.scales, e / 32, &scale, &min);
    int q = (b.qs[32 * (e / 64) + e % 32] >> (4 * ((e % 64) / 32))) & 0x0f;
    if constexpr (kType == GgmlType::Q5_K) q |= ((b.qh[e % 32] >> (e / 32)) & 1) << 4;
    const float dl = __fmul_rn(half_bits_to_float(b.d), static_cast<float>(scale));
    const float ml = __fmul_rn(half_bits_to_float(b.dmin), static_cast<float>(min));
    return __fsub_rn(__fmul_rn(dl, static_cast<float>(q)), ml);
  } else {
    static_assert(kType == GgmlType::Q6_K);
    const BlockQ6_K& b = static_cast<const BlockQ6_K*>(src)[i / 256];
    const int e = static_cast<int>(i % 256), h = e / 128, r = e % 128;
    const int lo = (b.ql[64 * h + r % 64] >> (4 * (r / 64))) & 0x0f;
    const int hi = (b.qh[32 * h + r % 32] >> (2 * (r / 32))) & 3;
    const float dl = __fmul_rn(half_bits_to_float(b.d), static_cast<float>(b.scales[e / 16]));
    return __fmul_rn(dl, static_cast<float>((lo | (hi << 4)) - 32));
  }
}

template <typename Out>
__device__ __forceinline__ Out store_cast(float v);
template <>
__device__ __forceinline__ float store_cast<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ uint16_t store_cast<uint16_t>(float v) {
  return __half_as_ushort(__float2half_rn(v));
}

template <GgmlType kType, typename Out>
__global__ void dequant_kernel(const void* src, Out* dst, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    dst[i] = store_cast<Out>(load<kType>(src, i));
  }
}

// One block per token; the row starts at a multiple of the row size, so element indices
// within the row address its blocks as in a whole tensor.
template <GgmlType kType>
__global__ void embedding_kernel(float* out, const uint8_t* table, const int32_t* tokens, int dim,
                                 size_t row_bytes) {
  const uint8_t* row = table + static_cast<size_t>(tokens[blockIdx.x]) * row_bytes;
  float* o = out + static_cast<size_t>(blockIdx.x) * dim;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) o[i] = load<kType>(row, i);
}

template <typename Out>
void launch(GgmlType type, const void* src, Out* dst, int64_t n, cudaStream_t stream) {
  const int64_t block = ggml_block_size(type);
  if (block == 0 || n < 0 || n % block != 0) {
    throw std::invalid_argument(std::string("dequantize_cuda: type ") + ggml_type_name(type) +
                                " with " + std::to_string(n) + " elements is not supported");
  }
  if (n == 0) return;
  constexpr int kThreads = 256;
  const int64_t want = (n + kThreads - 1) / kThreads;
  const unsigned blocks = static_cast<unsigned>(want < 65536 ? want : 65536);
  switch (type) {
    case GgmlType::F32:
      dequant_kernel<GgmlType::F32, Out><<<blocks, kThreads, 0, stream>>>(src, dst, n);
      break;
    case GgmlType::F16:
      dequant_kernel<GgmlType::F16, Out><<<blocks, kThreads, 0, stream>>>(src, dst, n);
      break;
    case GgmlType::BF16:
      dequant_kernel<GgmlType::BF16, Out><<<blocks, kThreads, 0, stream>>>(src, dst, n);
      break;
    case GgmlType::Q8_0:
      dequant_kernel<GgmlType::Q8_0, Out><<<blocks, kThreads, 0, stream>>>(src, dst, n);
      break;
    case GgmlType::Q4_0:
      dequant_kernel<GgmlType::Q4_0, Out><<<blocks, kThreads, 0, stream>>>(src, dst, n);
      break;
    case GgmlType::Q4_1:
      dequant_kernel<GgmlType::Q4_1, Out><<<blocks, kThreads, 0, stream>>>(src, dst, n);
      break;
    case GgmlType::Q5_0:
      dequant_kernel<GgmlType::Q5_0, Out><<<blocks, kThreads, 0, stream>>>(src, dst, n);
      break;
    case GgmlType::Q5_1:
      dequant_kernel<GgmlType::Q5_1, Out><<<blocks, kThreads, 0, stream>>>(src, dst, n);
      break;
    case GgmlType::Q2_K:
      dequant_kernel<GgmlType::Q2_K, Out><<<blocks, kThreads, 0, stream>>>(src, dst, n);
      break;
    case GgmlType::Q3_K:
      dequant_kernel<GgmlType::Q3_K, Out><<<blocks, kThreads, 0, stream>>>(src, dst, n);
      break;
    case GgmlType::Q4_K:
      dequant_kernel<GgmlType::Q4_K, Out><<<blocks, kThreads, 0, stream>>>(src, dst, n);
      break;
    case GgmlType::Q5_K:
      dequant_kernel<GgmlType::Q5_K, Out><<<blocks, kThreads, 0, stream>>>(src, dst, n);
      break;
    case GgmlType::Q6_K:
      dequant_kernel<GgmlType::Q6_K, Out><<<blocks, kThreads, 0, stream>>>(src, dst, n);
      break;
  }
  CUDA_CHECK_LAUNCH("dequant_kernel");
}

}  // namespace

void embedding_cuda(float* out, GgmlType type, const void* table, const int32_t* tokens, int n,
                    int dim, cudaStream_t stream) {
  const size_t row_bytes = ggml_row_size(type, dim);  // validates type and dim
  if (n <= 0) return;
  const auto* t = static_cast<const uint8_t*>(table);
  constexpr int kThreads = 256;
  switch (type) {
    case GgmlType::F32:
      embedding_kernel<GgmlType::F32><<<n, kThreads, 0, stream>>>(out, t, tokens, dim, row_bytes);
      break;
    case GgmlType::F16:
      embedding_kernel<GgmlType::F16><<<n, kThreads, 0, stream>>>(out, t, tokens, dim, row_bytes);
      break;
    case GgmlType::BF16:
      embedding_kernel<GgmlType::BF16><<<n, kThreads, 0, stream>>>(out, t, tokens, dim, row_bytes);
      break;
    case GgmlType::Q8_0:
      embedding_kernel<GgmlType::Q8_0><<<n, kThreads, 0, stream>>>(out, t, tokens, dim, row_bytes);
      break;
    case GgmlType::Q4_0:
      embedding_kernel<GgmlType::Q4_0><<<n, kThreads, 0, stream>>>(out, t, tokens, dim, row_bytes);
      break;
    case GgmlType::Q4_1:
      embedding_kernel<GgmlType::Q4_1><<<n, kThreads, 0, stream>>>(out, t, tokens, dim, row_bytes);
      break;
    case GgmlType::Q5_0:
      embedding_kernel<GgmlType::Q5_0><<<n, kThreads, 0, stream>>>(out, t, tokens, dim, row_bytes);
      break;
    case GgmlType::Q5_1:
      embedding_kernel<GgmlType::Q5_1><<<n, kThreads, 0, stream>>>(out, t, tokens, dim, row_bytes);
      break;
    case GgmlType::Q2_K:
      embedding_kernel<GgmlType::Q2_K><<<n, kThreads, 0, stream>>>(out, t, tokens, dim, row_bytes);
      break;
    case GgmlType::Q3_K:
      embedding_kernel<GgmlType::Q3_K><<<n, kThreads, 0, stream>>>(out, t, tokens, dim, row_bytes);
      break;
    case GgmlType::Q4_K:
      embedding_kernel<GgmlType::Q4_K><<<n, kThreads, 0, stream>>>(out, t, tokens, dim, row_bytes);
      break;
    case GgmlType::Q5_K:
      embedding_kernel<GgmlType::Q5_K><<<n, kThreads, 0, stream>>>(out, t, tokens, dim, row_bytes);
      break;
    case GgmlType::Q6_K:
      embedding_kernel<GgmlType::Q6_K><<<n, kThreads, 0, stream>>>(out, t, tokens, dim, row_bytes);
      break;
  }
  CUDA_CHECK_LAUNCH("embedding_kernel");
}

void dequantize_cuda(GgmlType type, const void* src, float* dst, int64_t n, cudaStream_t stream) {
  launch<float>(type, src, dst, n, stream);
}

void dequantize_f16_cuda(GgmlType type, const void* src, uint16_t* dst, int64_t n,
                         cudaStream_t stream) {
  launch<uint16_t>(type, src, dst, n, stream);
}

}  // namespace dsi::kernels
