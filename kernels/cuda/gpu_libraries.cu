// cuBLAS and NCCL opened on first use (kernels/cuda_check.h): dlopen of the soname of the
// toolkit and of the NCCL headers dsi was built with, each function looked up by its exported
// name. The library path decides which copy is taken (the CUDA toolkit's, or NVIDIA's Python
// wheels' under site-packages/nvidia/*/lib); launch/gpu_checks.sh finds them and says which.
#include <dlfcn.h>

#include <string>

#include "kernels/cuda_check.h"

#if !defined(DSI_CUBLAS_SONAME) || !defined(DSI_NCCL_SONAME)
#error "DSI_CUBLAS_SONAME and DSI_NCCL_SONAME (e.g. \"libcublas.so.13\") are set by CMake"
#endif

namespace dsi {
namespace {

// Opens `soname` or throws E naming it and what the dynamic loader said.
template <typename E>
void* open_library(const char* lib, const char* soname, const char* who) {
  void* h = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
  if (h == nullptr) {
    const char* why = dlerror();
    throw E(std::string(lib) + " could not be loaded (" + (why ? why : "dlopen") + "); " + who +
                " needs " + soname + " on the library path (LD_LIBRARY_PATH)",
            -1);
  }
  return h;  // stays open for the process's life
}

template <typename E, typename F>
void bind(void* h, const char* soname, const char* name, F* out) {
  void* f = dlsym(h, name);
  if (f == nullptr) throw E(std::string(soname) + " has no " + name, -1);
  *out = reinterpret_cast<F>(f);
}

CublasApi open_cublas() {
  const char* so = DSI_CUBLAS_SONAME;
  void* h = open_library<CublasError>("cuBLAS", so, "the CUDA engine");
  CublasApi a{};
  bind<CublasError>(h, so, "cublasCreate_v2", &a.create);
  bind<CublasError>(h, so, "cublasDestroy_v2", &a.destroy);
  bind<CublasError>(h, so, "cublasSetStream_v2", &a.set_stream);
  bind<CublasError>(h, so, "cublasSetMathMode", &a.set_math_mode);
  bind<CublasError>(h, so, "cublasGemmEx", &a.gemm_ex);
  bind<CublasError>(h, so, "cublasSaxpy_v2", &a.saxpy);
  bind<CublasError>(h, so, "cublasGetStatusString", &a.status_string);
  return a;
}

NcclApi open_nccl() {
  const char* so = DSI_NCCL_SONAME;
  void* h = open_library<NcclError>("NCCL", so, "the NCCL data plane");
  NcclApi a{};
  bind<NcclError>(h, so, "ncclGetVersion", &a.get_version);
  bind<NcclError>(h, so, "ncclGetErrorString", &a.get_error_string);
  bind<NcclError>(h, so, "ncclGetLastError", &a.get_last_error);
  bind<NcclError>(h, so, "ncclGetUniqueId", &a.get_unique_id);
  bind<NcclError>(h, so, "ncclCommInitRankConfig", &a.comm_init_rank_config);
  bind<NcclError>(h, so, "ncclCommGetAsyncError", &a.comm_get_async_error);
  bind<NcclError>(h, so, "ncclCommFinalize", &a.comm_finalize);
  bind<NcclError>(h, so, "ncclCommDestroy", &a.comm_destroy);
  bind<NcclError>(h, so, "ncclCommAbort", &a.comm_abort);
  bind<NcclError>(h, so, "ncclGroupStart", &a.group_start);
  bind<NcclError>(h, so, "ncclGroupEnd", &a.group_end);
  bind<NcclError>(h, so, "ncclSend", &a.send);
  bind<NcclError>(h, so, "ncclRecv", &a.recv);
  return a;
}

}  // namespace

const CublasApi& cublas() {
  static const CublasApi api = open_cublas();  // a failed open is retried at the next call
  return api;
}

const NcclApi& nccl() {
  static const NcclApi api = open_nccl();
  return api;
}

}  // namespace dsi
