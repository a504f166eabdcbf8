// Dense layers over weights used in place, in their GGUF types: y = x W^T (+ b) with W a
// row-major (rows, cols) matrix of any type of kernels/ggml_type.h, read straight from where
// it lies (usually a read-only mapping of the model file) and never expanded as a whole.
//
// The arithmetic is fixed, so that results are bit-identical whatever the batch, the offset of
// a token in it, the thread count or the instruction set. Activations stay exact float32 (no
// rounding of x to 8 bits, unlike llama.cpp); the weights enter in their factored form
// (kernels/dequant.h: element i of group g is a[g] * q[i] + b[g], all exact), so that the scales
// multiply sums of code-activation products instead of every element:
//   acc is 8 float lanes, all +0 at first; lanes l < 8 of a chunk of 8 consecutive columns;
//   quantized types: for every group g, in order, with chunks c = 0 .. group/8 - 1 of it:
//     s[l] = q[c0 l] * x[c0 l], then s[l] = fma(q[c l], x[c l], s[l]) for c = 1, 2, ...;
//     acc[l] = fma(a[g], s[l], acc[l]);
//     affine types then acc[l] = fma(b[g], xs[g][l], acc[l]), where xs[g][l] is the sum of
//     x[c l] over the group's chunks, added in order (first chunk, + second, + ...);
//   float types (F32, F16, BF16): for every chunk c, in order, acc[l] = fma(w[c l], x[c l],
//     acc[l]), a last partial chunk reading 0 for both operands beyond `cols`;
//   y[t][r] = hsum(acc) + bias[r], hsum(a) = ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7)).
// Every (row, token) result is computed whole by one thread with that one sequence of roundings;
// batching, tiling and threading only change which results are computed side by side.
// dot_reference spells the same arithmetic out in scalar code, for tests.
//
// Opt-in 8-bit activations (Activations::kQ8, as llama.cpp computes; faster, not exact): for
// the types Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K and Q6_K, each token's x is rounded to
// int8 in blocks of the weight's block size E (32; 256 for the K-quants): dx = max|x| / 127,
// x8[i] = nearest integer to x[i] * (127 / max|x|) (0 for an all-zero block). A block's weights
// are w[i] = d * s[g] * c[i] + e * m[g] with integer codes c, integer group scales s and
// offsets m, and float d, e (q8_block below). Per block, integer sums (exact) then floats:
//   Iv[l] = sum over chunks j of 32 elements of s[g] * (c x8 summed over elements 32 j + 4 l ..
//   32 j + 4 l + 3) for lanes l < 8, g the group of those elements;
//   acc[l] = fma(d * dx, float(Iv[l]), acc[l]); for types with offsets (Q4_1, Q5_1, Q4_K, Q5_K,
//   Q6_K) sm = fma(e * dx, float(M), sm) with M = the sum over groups of m[g] * (sum of the
//   group's x8); y = (hsum(acc) + sm) + bias.
// Integer sums are exact, so every variant and batch gives the same bits here too. Other types
// (float, Q2_K, Q3_K) keep float32 activations in this mode.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "common/thread_pool.h"
#include "kernels/ggml_type.h"

namespace dsi::kernels {

// A (rows, cols) weight matrix of `type`, row r at data + r * row_bytes. Does not own data.
struct WeightMatrix {
  GgmlType type = GgmlType::F32;
  const uint8_t* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  size_t row_bytes = 0;

  bool empty() const { return data == nullptr; }
  const uint8_t* row(int64_t r) const { return data + static_cast<size_t>(r) * row_bytes; }
  size_t bytes() const { return static_cast<size_t>(rows) * row_bytes; }
};

// Describes `data` as a matrix. Throws std::invalid_argument for an unsupported type or a
// `cols` that is not a whole number of the type's blocks.
WeightMatrix weight_matrix(GgmlType type, const void* data, int64_t rows, int64_t cols);

// Which code computes the products. Both give the same bits (the arithmetic above);
// kGeneric is portable C++, kAvx2 needs AVX2, FMA and F16C.
enum class KernelIsa { kGeneric, kAvx2 };

// The best this CPU runs, unless the environment variable DSI_KERNEL_ISA says "generic".
KernelIsa kernel_isa();
const char* kernel_isa_name(KernelIsa isa);
bool kernel_isa_supported(KernelIsa isa);

// What enters the products of quantized weights: exact float32 (the default), or x rounded to
// 8 bits per block (above).
enum class Activations { kF32, kQ8 };
const char* activations_name(Activations a);
// Throws std::invalid_argument naming the accepted values.
Activations parse_activations(const std::string& name);
// Whether `type` has 8-bit-activation products (other types keep float32 activations).
bool q8_supported(GgmlType type);

// One product of a batch that shares its input: y (n, w.rows) = x (n, w.cols) W^T + bias.
struct MatmulJob {
  float* y = nullptr;
  const WeightMatrix* w = nullptr;
  const float* bias = nullptr;  // (w.rows) or nullptr
};

// Runs every job over the same x (n rows of cols floats; every job's w.cols equals cols),
// spreading rows over `pool` (nullptr: the calling thread alone). Putting the products that
// read the same input in one call (Q, K and V; gate and up) costs one fork-join, not three.
void qmatmul(std::span<const MatmulJob> jobs, const float* x, int n, int64_t cols, ThreadPool* pool,
             KernelIsa isa = kernel_isa(), Activations act = Activations::kF32);

inline void qmatmul(float* y, const float* x, const WeightMatrix& w, const float* bias, int n,
                    ThreadPool* pool, KernelIsa isa = kernel_isa(),
                    Activations act = Activations::kF32) {
  const MatmulJob job{y, &w, bias};
  qmatmul(std::span<const MatmulJob>(&job, 1), x, n, w.cols, pool, isa, act);
}

// The arithmetic above in plain scalar code: the product of row r of w with x (w.cols floats).
float dot_reference(const WeightMatrix& w, int64_t r, const float* x);

// The 8-bit-activation arithmetic above in plain scalar code (q8_supported types only).
float dot_q8_reference(const WeightMatrix& w, int64_t r, const float* x);

// Row r of w dequantized into out (w.cols floats); the embedding lookup and tests use it.
void weight_row(const WeightMatrix& w, int64_t r, float* out);

}  // namespace dsi::kernels
