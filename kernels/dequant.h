// Conversion of GGUF tensor rows (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and the K-quants
// Q2_K..Q6_K) to float, bit-exact against the float32 formulas of kernels/ggml_type.h. CPU
// reference used by model loaders and by tests of the quantised kernels; it does not check file
// bounds (the GGUF reader does that before handing out a pointer).
#pragma once

#include <cstdint>

#include "kernels/ggml_type.h"

namespace dsi {

// Writes n floats to dst from the row at src (ggml_row_size(type, n) bytes, any alignment).
// Throws std::invalid_argument for an unsupported type or n not a multiple of the block.
void dequantize_row(GgmlType type, const void* src, float* dst, int64_t n);

// The factored form of a row of a quantized type, which the products of kernels/qmatmul.h
// compute with. Elements fall in groups of `group` consecutive ones; element i of group g is
// a[g] * q[i] + b[g] with q[i] a small integer (held as a float) and, for every element,
// fma(a[g], q[i], b[g]) equal bit for bit to dequantize_row's value (each product of a scale
// and a code is exact in float). `affine` is false for the types whose b is always 0.
struct QuantGroups {
  int64_t group = 0;    // 32, or 16 for Q2_K, Q3_K and Q6_K; 0 for the float types
  bool affine = false;  // Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q4_K, Q5_K (Q4_0: b = -8a, Q5_0: -16a)
};
QuantGroups quant_groups(GgmlType type);

// Writes the n codes of the row at src to q and its n / group scales and offsets to a and b.
// Throws std::invalid_argument for a float or unsupported type, or n not a multiple of the block.
void factor_row(GgmlType type, const void* src, int64_t n, float* q, float* a, float* b);

namespace kernels {
using dsi::dequantize_row;
using dsi::factor_row;
using dsi::ggml_row_size;
using dsi::quant_groups;
using dsi::QuantGroups;
}  // namespace kernels

}  // namespace dsi
