// Dense layer on the GPU through cuBLAS, with the contract of matmul_cpu (kernels/matmul.h):
// y (n, out) = x (n, in) W^T (+ bias), W row-major (out, in). x and W share one element type
// (FP32, FP16 or BF16); y is FP32 and accumulation is FP32 in every case.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace dsi::kernels {

enum class GemmType : int { kF32 = 0, kF16 = 1, kBF16 = 2 };

// Owns a cuBLAS handle bound to the current device. Not thread-safe: one per stream/thread.
// Creating it needs a device (throws CublasError otherwise).
class CublasHandle {
 public:
  // allow_tf32: FP32 GEMMs may use TF32 tensor cores (faster, ~1e-3 relative error).
  explicit CublasHandle(bool allow_tf32 = false);
  ~CublasHandle();
  CublasHandle(const CublasHandle&) = delete;
  CublasHandle& operator=(const CublasHandle&) = delete;
  cublasHandle_t get() const { return h_; }

 private:
  cublasHandle_t h_ = nullptr;
};

// Rounds n FP32 activations to the GEMM input type (nearest even; kF32 copies), so that an
// FP16/BF16 weight can be multiplied by FP32 activations. dst holds n elements of `type`.
void convert_f32_cuda(void* dst, GemmType type, const float* src, int64_t n, cudaStream_t stream);

// bias: FP32 (out) or nullptr. Enqueued on `stream` (the handle is rebound to it). Not
// batch-invariant: cuBLAS picks a kernel, a split of the reduction and tiles per problem size,
// so a row's sum order changes with n.
void gemm_cuda(const CublasHandle& handle, float* y, const void* x, const void* w,
               const float* bias, GemmType type, int n, int in, int out, cudaStream_t stream);

// The same product, batch-invariant: y[r] has the same bits whatever n and whatever rows share
// the call (one warp per output element's row, a fixed per-lane order and a fixed butterfly;
// kernels/cuda/gemm_invariant.cu). No cuBLAS. Memory-bound: tokens are taken 8 at a time per
// weight load, so for n <= 8 (decode, verify) it reads the weights once, for prefills n / 8
// times (mostly from L2). Throws std::invalid_argument for in <= 0 or n > 524280.
void gemm_invariant_cuda(float* y, const void* x, const void* w, const float* bias, GemmType type,
                         int n, int in, int out, cudaStream_t stream);

}  // namespace dsi::kernels
