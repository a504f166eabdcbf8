// CPU SwiGLU (kernels/swiglu.h).
#include "kernels/swiglu.h"

#include <cmath>

namespace dsi::kernels {

void swiglu_cpu(float* out, const float* gate, const float* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

}  // namespace dsi::kernels
