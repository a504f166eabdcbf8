// Internals of kernels/qmatmul.h shared by its instruction-set variants: each variant computes
// blocks of dot products with the arithmetic that kernels/qmatmul.h fixes; kernels/cpu/qmatmul.cc
// tiles, threads and dispatches, and computes the group sums of the input once per call.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/dequant.h"
#include "kernels/ggml_type.h"
#include "kernels/qmatmul.h"

namespace dsi::kernels::detail {

struct QmatmulIsa {
  // For r < nr, t < n: y[t * ys + r] = the product of row r0 + r of w with x + t * w.cols, plus
  // bias[r] when bias is not nullptr. For affine types, xs holds each token's group sums
  // (group_sums, w.cols / group * 8 floats a token); nullptr otherwise.
  void (*rows)(const WeightMatrix& w, int64_t r0, int nr, const float* x, int n, const float* xs,
               float* y, size_t ys, const float* bias);
};

// xs[8 g + l] = the sum of x[group * g + 8 c + l] over c = 0 .. group/8 - 1, added in order.
void group_sums(const float* x, int64_t cols, int64_t group, float* xs);

// Float lanes shared by the variants' scalar tails: ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + ...).
inline float hsum8(const float* a) {
  return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
}

extern const QmatmulIsa kGenericIsa;
extern const QmatmulIsa kAvx2Isa;  // only when built for x86-64 (DSI_HAVE_AVX2_KERNELS)

}  // namespace dsi::kernels::detail
