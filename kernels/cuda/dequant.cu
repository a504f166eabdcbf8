// CUDA twin of kernels/cpu/dequant.cc (whole tensors, and rows gathered by token id for the
// embedding lookup): one thread per output element. Blocks are read through
// their 2-byte-aligned structs (kernels/ggml_type.h), so any GGUF tensor offset works.
#include <cuda_fp16.h>

#include <stdexcept>
#include <string>

#include "kernels/cuda_check.h"
#include "kernels/dequant_cuda.h"

namespace dsi::kernels {
namespace {

__device__ __forceinline__ float half_bits_to_float(uint16_t h) {
  return __half2float(__ushort_as_half(h));
}

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
  } else {
    // Q4_0 / Q4_1: byte j % 16 holds element j in its low nibble, j + 16 in its high one.
    const int j = static_cast<int>(i % 32);
    if constexpr (kType == GgmlType::Q4_0) {
      const BlockQ4_0& b = static_cast<const BlockQ4_0*>(src)[i / 32];
      const int q = j < 16 ? (b.qs[j] & 0x0f) : (b.qs[j - 16] >> 4);
      return (q - 8) * half_bits_to_float(b.d);
    } else {
      const BlockQ4_1& b = static_cast<const BlockQ4_1*>(src)[i / 32];
      const int q = j < 16 ? (b.qs[j] & 0x0f) : (b.qs[j - 16] >> 4);
      return q * half_bits_to_float(b.d) + half_bits_to_float(b.m);
    }
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
