// The one error-check family for CUDA, cuBLAS and NCCL calls: CUDA_CHECK(expr),
// CUBLAS_CHECK(expr), NCCL_CHECK(expr) throw a typed error naming the call, file:line and the
// library's error string. Kernel launches are checked with CUDA_CHECK(cudaGetLastError()).
// Host code only; never used inside kernels.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include <stdexcept>
#include <string>

namespace dsi {

// Base of the three: what() is "CUDA error at kernels/cuda/x.cu:12: cudaMalloc(...): out of
// memory". code() is the library's numeric status.
class GpuError : public std::runtime_error {
 public:
  GpuError(const std::string& what, int code) : std::runtime_error(what), code_(code) {}
  int code() const { return code_; }

 private:
  int code_;
};
class CudaError : public GpuError {
 public:
  using GpuError::GpuError;
};
class CublasError : public GpuError {
 public:
  using GpuError::GpuError;
};
class NcclError : public GpuError {
 public:
  using GpuError::GpuError;
};

namespace detail {
inline std::string gpu_where(const char* lib, const char* file, int line, const char* expr,
                             const char* msg) {
  return std::string(lib) + " error at " + file + ":" + std::to_string(line) + ": " + expr + ": " +
         msg;
}
inline void cuda_check(cudaError_t e, const char* expr, const char* file, int line) {
  if (e != cudaSuccess) {
    throw CudaError(gpu_where("CUDA", file, line, expr, cudaGetErrorString(e)),
                    static_cast<int>(e));
  }
}
inline void cublas_check(cublasStatus_t s, const char* expr, const char* file, int line) {
  if (s != CUBLAS_STATUS_SUCCESS) {
    throw CublasError(gpu_where("cuBLAS", file, line, expr, cublasGetStatusString(s)),
                      static_cast<int>(s));
  }
}
inline void nccl_check(ncclResult_t r, const char* expr, const char* file, int line) {
  if (r != ncclSuccess) {
    throw NcclError(gpu_where("NCCL", file, line, expr, ncclGetErrorString(r)),
                    static_cast<int>(r));
  }
}
}  // namespace detail

}  // namespace dsi

#define CUDA_CHECK(expr) ::dsi::detail::cuda_check((expr), #expr, __FILE__, __LINE__)
#define CUBLAS_CHECK(expr) ::dsi::detail::cublas_check((expr), #expr, __FILE__, __LINE__)
#define NCCL_CHECK(expr) ::dsi::detail::nccl_check((expr), #expr, __FILE__, __LINE__)
