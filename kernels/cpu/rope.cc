// CPU RoPE (kernels/rope.h). Angles are computed in double: at position 8k with base 1e4 the
// float32 angle of the fastest pair would already be off by ~1e-4 rad.
#include "kernels/rope.h"

#include <cmath>
#include <cstddef>
#include <vector>

namespace dsi::kernels {

void rope_cpu(float* x, const int32_t* pos, int n, int n_heads, int head_dim, int rot_dim,
              float freq_base, RopeLayout layout) {
  const int half = rot_dim / 2;
  std::vector<double> inv_freq(half);
  for (int i = 0; i < half; ++i) inv_freq[i] = std::pow(double{freq_base}, -2.0 * i / rot_dim);
  std::vector<float> c(half), s(half);
  for (int r = 0; r < n; ++r) {
    for (int i = 0; i < half; ++i) {
      const double a = pos[r] * inv_freq[i];
      c[i] = static_cast<float>(std::cos(a));
      s[i] = static_cast<float>(std::sin(a));
    }
    for (int h = 0; h < n_heads; ++h) {
      float* v = x + (static_cast<size_t>(r) * n_heads + h) * head_dim;
      for (int i = 0; i < half; ++i) {
        const int i0 = layout == RopeLayout::kAdjacentPairs ? 2 * i : i;
        const int i1 = layout == RopeLayout::kAdjacentPairs ? 2 * i + 1 : i + half;
        const float a = v[i0], b = v[i1];
        v[i0] = a * c[i] - b * s[i];
        v[i1] = a * s[i] + b * c[i];
      }
    }
  }
}

}  // namespace dsi::kernels
