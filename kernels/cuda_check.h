// The one error-check family for CUDA, cuBLAS and NCCL calls: CUDA_CHECK(expr),
// CUBLAS_CHECK(expr), NCCL_CHECK(expr) throw a typed error (common/error.h) naming the process
// (rank and host, once a session set them), the GPU, the call, file:line and the library's error
// string. Every kernel launch is followed by CUDA_CHECK_LAUNCH("kernel"), which reports a bad
// launch configuration at the launch rather than at the next synchronising call. Host code
// only; never used inside kernels.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include <string>

#include "common/error.h"

namespace dsi {

// cuBLAS, opened with dlopen on first use rather than linked: merely loading libcublas (and the
// libcublasLt it pulls in) costs a process about 94 MiB of relocated data, which every rank of
// a CPU-only or synthetic run would pay. Throws CublasError when the library cannot be opened
// or lacks a function.
struct CublasApi {
  decltype(&::cublasCreate_v2) create;
  decltype(&::cublasDestroy_v2) destroy;
  decltype(&::cublasSetStream_v2) set_stream;
  decltype(&::cublasSetMathMode) set_math_mode;
  // (cublas_api.h overloads cublasGemmEx with an inline wrapper: the exported one, spelt out)
  cublasStatus_t (*gemm_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                            const void*, const void*, cudaDataType, int, const void*, cudaDataType,
                            int, const void*, void*, cudaDataType, int, cublasComputeType_t,
                            cublasGemmAlgo_t);
  decltype(&::cublasSaxpy_v2) saxpy;
  decltype(&::cublasGetStatusString) status_string;
};
const CublasApi& cublas();

// NCCL, opened the same way: a process that never makes an NCCL data channel never loads it,
// and a binary built with CUDA starts where NCCL is absent. Throws NcclError when the library
// cannot be opened or lacks a function.
struct NcclApi {
  decltype(&::ncclGetVersion) get_version;
  decltype(&::ncclGetErrorString) get_error_string;
  decltype(&::ncclGetLastError) get_last_error;
  decltype(&::ncclGetUniqueId) get_unique_id;
  decltype(&::ncclCommInitRankConfig) comm_init_rank_config;
  decltype(&::ncclCommGetAsyncError) comm_get_async_error;
  decltype(&::ncclCommFinalize) comm_finalize;
  decltype(&::ncclCommDestroy) comm_destroy;
  decltype(&::ncclCommAbort) comm_abort;
  decltype(&::ncclGroupStart) group_start;
  decltype(&::ncclGroupEnd) group_end;
  decltype(&::ncclSend) send;
  decltype(&::ncclRecv) recv;
};
const NcclApi& nccl();

namespace detail {

// "GPU 1 (0000:1b:00.0)": the current device, by index and PCI bus id (which stays the same
// whatever CUDA_VISIBLE_DEVICES says); "GPU ?" when even that cannot be asked. Only called
// while an error is being raised; a failure of its own queries is cleared, not reported.
inline std::string gpu_label() {
  int dev = -1;
  if (cudaGetDevice(&dev) != cudaSuccess) {
    cudaGetLastError();
    return "GPU ?";
  }
  char bus[32] = {};
  if (cudaDeviceGetPCIBusId(bus, sizeof bus, dev) != cudaSuccess) {
    cudaGetLastError();
    return "GPU " + std::to_string(dev);
  }
  return "GPU " + std::to_string(dev) + " (" + bus + ")";
}

// what() is "rank 3 on node7: CUDA error on GPU 1 (0000:1b:00.0) at kernels/cuda/x.cu:12:
// cudaMalloc(...): out of memory".
inline std::string gpu_where(const char* lib, const char* file, int line, const char* expr,
                             const char* msg) {
  return std::string(lib) + " error on " + gpu_label() + " at " + file + ":" +
         std::to_string(line) + ": " + expr + ": " + msg;
}
inline void cuda_check(cudaError_t e, const char* expr, const char* file, int line) {
  if (e != cudaSuccess) {
    throw CudaError(gpu_where("CUDA", file, line, expr, cudaGetErrorString(e)),
                    static_cast<int>(e));
  }
}
inline void cublas_check(cublasStatus_t s, const char* expr, const char* file, int line) {
  if (s != CUBLAS_STATUS_SUCCESS) {
    throw CublasError(gpu_where("cuBLAS", file, line, expr, cublas().status_string(s)),
                      static_cast<int>(s));
  }
}
inline void nccl_check(ncclResult_t r, const char* expr, const char* file, int line) {
  if (r != ncclSuccess) {
    throw NcclError(gpu_where("NCCL", file, line, expr, nccl().get_error_string(r)),
                    static_cast<int>(r));
  }
}
inline void launch_check(const char* kernel, const char* file, int line) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) {
    throw CudaError(gpu_where("CUDA", file, line, (std::string("launch of ") + kernel).c_str(),
                              cudaGetErrorString(e)),
                    static_cast<int>(e));
  }
}
}  // namespace detail

// Whether the work queued on `st` has run: cudaStreamQuery without blocking. Not ready is an
// answer, not a failure, and is cleared so that no later check reports it; any other error
// throws CudaError.
inline bool stream_done(cudaStream_t st) {
  const cudaError_t e = cudaStreamQuery(st);
  if (e == cudaErrorNotReady) {
    (void)cudaGetLastError();
    return false;
  }
  detail::cuda_check(e, "cudaStreamQuery", __FILE__, __LINE__);
  return true;
}

}  // namespace dsi

#define CUDA_CHECK(expr) ::dsi::detail::cuda_check((expr), #expr, __FILE__, __LINE__)
#define CUBLAS_CHECK(expr) ::dsi::detail::cublas_check((expr), #expr, __FILE__, __LINE__)
#define NCCL_CHECK(expr) ::dsi::detail::nccl_check((expr), #expr, __FILE__, __LINE__)
#define CUDA_CHECK_LAUNCH(kernel) ::dsi::detail::launch_check((kernel), __FILE__, __LINE__)
