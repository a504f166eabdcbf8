// CPU RMSNorm (kernels/rmsnorm.h).
#include "kernels/rmsnorm.h"

#include <cmath>
#include <cstddef>

namespace dsi::kernels {

void rmsnorm_cpu(float* out, const float* x, const float* w, int n, int dim, float eps) {
  for (int r = 0; r < n; ++r) {
    const float* xr = x + static_cast<size_t>(r) * dim;
    float* yr = out + static_cast<size_t>(r) * dim;
    double ss = 0;
    for (int i = 0; i < dim; ++i) ss += static_cast<double>(xr[i]) * xr[i];
    const float scale = static_cast<float>(1.0 / std::sqrt(ss / dim + eps));
    for (int i = 0; i < dim; ++i) yr[i] = xr[i] * scale * w[i];
  }
}

}  // namespace dsi::kernels
