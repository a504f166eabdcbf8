#include "kernels/argmax.h"

namespace dsi::kernels {

void argmax_cpu(int32_t* out, const float* x, int n, int vocab) {
  for (int r = 0; r < n; ++r) {
    const float* row = x + static_cast<long>(r) * vocab;
    int best = 0;
    for (int i = 1; i < vocab; ++i) {
      if (row[i] > row[best]) best = i;
    }
    out[r] = best;
  }
}

}  // namespace dsi::kernels
