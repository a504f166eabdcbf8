// cuBLAS opened on first use (kernels/cuda_check.h): dlopen of the toolkit's soname, each
// function looked up by its exported name.
#include <dlfcn.h>

#include <string>

#include "kernels/cuda_check.h"

#ifndef DSI_CUBLAS_SONAME
#error "DSI_CUBLAS_SONAME (e.g. \"libcublas.so.13\") is set by CMake from the toolkit's version"
#endif

namespace dsi {
namespace {

template <typename F>
void bind(void* lib, const char* name, F* out) {
  void* f = dlsym(lib, name);
  if (f == nullptr) {
    throw CublasError(std::string("cuBLAS: ") + DSI_CUBLAS_SONAME + " has no " + name, -1);
  }
  *out = reinterpret_cast<F>(f);
}

CublasApi open_cublas() {
  void* lib = dlopen(DSI_CUBLAS_SONAME, RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    const char* why = dlerror();
    throw CublasError(std::string("cuBLAS could not be loaded (") + (why ? why : "dlopen") +
                          "); the CUDA engine needs " + DSI_CUBLAS_SONAME + " on the library path",
                      -1);
  }
  CublasApi a{};
  bind(lib, "cublasCreate_v2", &a.create);
  bind(lib, "cublasDestroy_v2", &a.destroy);
  bind(lib, "cublasSetStream_v2", &a.set_stream);
  bind(lib, "cublasSetMathMode", &a.set_math_mode);
  bind(lib, "cublasGemmEx", &a.gemm_ex);
  bind(lib, "cublasSaxpy_v2", &a.saxpy);
  bind(lib, "cublasGetStatusString", &a.status_string);
  return a;  // the library stays open for the process's life
}

}  // namespace

const CublasApi& cublas() {
  static const CublasApi api = open_cublas();  // a failed open is retried at the next call
  return api;
}

}  // namespace dsi
