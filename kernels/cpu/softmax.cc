// CPU softmax (kernels/softmax.h).
#include "kernels/softmax.h"

#include <cmath>
#include <cstddef>

namespace dsi::kernels {

void softmax_cpu(float* x, int n, int dim) {
  for (int r = 0; r < n; ++r) {
    float* row = x + static_cast<size_t>(r) * dim;
    float mx = row[0];
    for (int i = 1; i < dim; ++i) mx = row[i] > mx ? row[i] : mx;
    double sum = 0;
    for (int i = 0; i < dim; ++i) {
      row[i] = std::exp(row[i] - mx);
      sum += row[i];
    }
    const float inv = static_cast<float>(1.0 / sum);
    for (int i = 0; i < dim; ++i) row[i] *= inv;
  }
}

}  // namespace dsi::kernels
