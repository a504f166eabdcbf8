// Numerically stable softmax over the rows of a matrix, in place. CPU reference.
#pragma once

namespace dsi::kernels {

// x: (n, dim) row-major. Entries equal to -inf get probability 0; a row must hold at least
// one finite value.
void softmax_cpu(float* x, int n, int dim);

}  // namespace dsi::kernels
