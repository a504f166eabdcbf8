// CPU dense layer over OpenBLAS (kernels/matmul.h).
#include "kernels/matmul.h"

#include <cblas.h>

#include <cstddef>

namespace dsi::kernels {

void matmul_cpu(float* y, const float* x, const float* w, const float* bias, int n, int in,
                int out) {
  if (n <= 0) return;
  if (n == 1) {
    cblas_sgemv(CblasRowMajor, CblasNoTrans, out, in, 1.0f, w, in, x, 1, 0.0f, y, 1);
  } else {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, in, 1.0f, x, in, w, in, 0.0f, y,
                out);
  }
  if (bias != nullptr) {
    for (int r = 0; r < n; ++r) {
      float* yr = y + static_cast<size_t>(r) * out;
      for (int i = 0; i < out; ++i) yr[i] += bias[i];
    }
  }
}

void set_blas_threads(int threads) {
  if (openblas_get_num_threads() != threads) openblas_set_num_threads(threads);
}

}  // namespace dsi::kernels
