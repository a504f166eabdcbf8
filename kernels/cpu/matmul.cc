// CPU dense layer (kernels/matmul.h): the reference loop. The engine's products are the
// quantized ones (kernels/qmatmul.h); this one is the CPU twin that the GPU GEMMs are checked
// against, so it is written for clarity first: eight partial sums (lane j takes the inputs
// i = j mod 8, which the compiler keeps in one vector register), added in order at the end.
#include "kernels/matmul.h"

#include <cstddef>

namespace dsi::kernels {

void matmul_cpu(float* y, const float* x, const float* w, const float* bias, int n, int in,
                int out) {
  constexpr int kLanes = 8;
  const int body = in - in % kLanes;
  for (int r = 0; r < n; ++r) {
    const float* xr = x + static_cast<size_t>(r) * in;
    float* yr = y + static_cast<size_t>(r) * out;
    for (int o = 0; o < out; ++o) {
      const float* wo = w + static_cast<size_t>(o) * in;
      float lane[kLanes] = {};
      for (int i = 0; i < body; i += kLanes) {
        for (int j = 0; j < kLanes; ++j) lane[j] += wo[i + j] * xr[i + j];
      }
      float s = 0.0f;
      for (int j = 0; j < kLanes; ++j) s += lane[j];
      for (int i = body; i < in; ++i) s += wo[i] * xr[i];
      yr[o] = bias != nullptr ? s + bias[o] : s;
    }
  }
}

}  // namespace dsi::kernels
