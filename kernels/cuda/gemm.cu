// cuBLAS GEMM behind kernels/gemm_cuda.h. Row-major y (n, out) = x (n, in) W^T is, in
// cuBLAS's column-major terms, Y^T (out, n) = op_T(W as (in, out)) * X^T (in, n): no copies.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/cuda_check.h"
#include "kernels/gemm_cuda.h"

namespace dsi::kernels {
namespace {

__global__ void add_bias_kernel(float* y, const float* bias, int n, int out) {
  const long total = static_cast<long>(n) * out;
  for (long i = static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<long>(gridDim.x) * blockDim.x) {
    y[i] += bias[i % out];
  }
}

template <typename Out>
__global__ void convert_kernel(Out* dst, const float* src, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if constexpr (std::is_same_v<Out, __half>) {
      dst[i] = __float2half_rn(src[i]);
    } else if constexpr (std::is_same_v<Out, __nv_bfloat16>) {
      dst[i] = __float2bfloat16_rn(src[i]);
    } else {
      dst[i] = src[i];
    }
  }
}

cudaDataType_t data_type(GemmType t) {
  switch (t) {
    case GemmType::kF32:
      return CUDA_R_32F;
    case GemmType::kF16:
      return CUDA_R_16F;
    case GemmType::kBF16:
      return CUDA_R_16BF;
  }
  throw std::invalid_argument("gemm_cuda: unknown GemmType " + std::to_string(static_cast<int>(t)));
}

}  // namespace

CublasHandle::CublasHandle(bool allow_tf32) {
  CUBLAS_CHECK(cublas().create(&h_));
  try {
    CUBLAS_CHECK(
        cublas().set_math_mode(h_, allow_tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
  } catch (...) {
    (void)cublas().destroy(h_);  // best effort: the error being thrown is the one to report
    throw;
  }
}

CublasHandle::~CublasHandle() {
  // A destructor cannot report; a broken context shows at the next checked call anyway.
  if (h_ != nullptr) (void)cublas().destroy(h_);
}

void convert_f32_cuda(void* dst, GemmType type, const float* src, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  constexpr int kThreads = 256;
  const int64_t want = (n + kThreads - 1) / kThreads;
  const unsigned blocks = static_cast<unsigned>(want < 65536 ? want : 65536);
  switch (type) {
    case GemmType::kF32:
      convert_kernel<<<blocks, kThreads, 0, stream>>>(static_cast<float*>(dst), src, n);
      break;
    case GemmType::kF16:
      convert_kernel<<<blocks, kThreads, 0, stream>>>(static_cast<__half*>(dst), src, n);
      break;
    case GemmType::kBF16:
      convert_kernel<<<blocks, kThreads, 0, stream>>>(static_cast<__nv_bfloat16*>(dst), src, n);
      break;
  }
  CUDA_CHECK_LAUNCH("convert_kernel");
}

void gemm_cuda(const CublasHandle& handle, float* y, const void* x, const void* w,
               const float* bias, GemmType type, int n, int in, int out, cudaStream_t stream) {
  if (n <= 0 || out <= 0) return;
  CUBLAS_CHECK(cublas().set_stream(handle.get(), stream));
  const float alpha = 1.0f, beta = 0.0f;
  const cudaDataType_t t = data_type(type);
  // FP32 inputs: plain FP32 compute unless the handle allows TF32 (its math mode decides).
  CUBLAS_CHECK(cublas().gemm_ex(handle.get(), CUBLAS_OP_T, CUBLAS_OP_N, out, n, in, &alpha, w, t,
                                in, x, t, in, &beta, y, CUDA_R_32F, out, CUBLAS_COMPUTE_32F,
                                CUBLAS_GEMM_DEFAULT));
  if (bias != nullptr) {
    constexpr int kThreads = 256;
    const long want = (static_cast<long>(n) * out + kThreads - 1) / kThreads;
    add_bias_kernel<<<static_cast<unsigned>(want < 65536 ? want : 65536), kThreads, 0, stream>>>(
        y, bias, n, out);
    CUDA_CHECK_LAUNCH("add_bias_kernel");
  }
}

}  // namespace dsi::kernels
