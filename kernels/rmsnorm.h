// RMSNorm over the rows of a matrix: out = x / sqrt(mean(x^2) + eps) * w. CPU reference; a
// CUDA twin will take the same arguments plus a stream.
#pragma once

namespace dsi::kernels {

// x, out: (n, dim) row-major, may alias; w: (dim). The mean of squares is accumulated in
// double so that long rows do not lose precision.
void rmsnorm_cpu(float* out, const float* x, const float* w, int n, int dim, float eps);

}  // namespace dsi::kernels
