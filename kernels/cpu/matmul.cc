// CPU dense layer (kernels/matmul.h): the plain reference loop. The engine's products are the
// quantized ones (kernels/qmatmul.h); this one is the CPU twin that the cuBLAS GEMM is checked
// against, so it is written for clarity, not speed.
#include "kernels/matmul.h"

#include <cstddef>

namespace dsi::kernels {

void matmul_cpu(float* y, const float* x, const float* w, const float* bias, int n, int in,
                int out) {
  for (int r = 0; r < n; ++r) {
    const float* xr = x + static_cast<size_t>(r) * in;
    float* yr = y + static_cast<size_t>(r) * out;
    for (int o = 0; o < out; ++o) {
      const float* wo = w + static_cast<size_t>(o) * in;
      float s = 0.0f;
      for (int i = 0; i < in; ++i) s += wo[i] * xr[i];
      yr[o] = bias != nullptr ? s + bias[o] : s;
    }
  }
}

}  // namespace dsi::kernels
