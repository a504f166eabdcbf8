// Token embedding lookup: copies one row of the embedding table per token. CPU reference.
#pragma once

#include <cstdint>

namespace dsi::kernels {

// out: (n, dim); table: (vocab, dim); tokens: (n), each in [0, vocab) (the caller checks).
void embedding_cpu(float* out, const float* table, const int32_t* tokens, int n, int dim);

}  // namespace dsi::kernels
