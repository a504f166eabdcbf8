// CPU embedding lookup (kernels/embedding.h).
#include "kernels/embedding.h"

#include <cstddef>
#include <cstring>

namespace dsi::kernels {

void embedding_cpu(float* out, const float* table, const int32_t* tokens, int n, int dim) {
  for (int i = 0; i < n; ++i) {
    std::memcpy(out + static_cast<size_t>(i) * dim, table + static_cast<size_t>(tokens[i]) * dim,
                sizeof(float) * dim);
  }
}

}  // namespace dsi::kernels
