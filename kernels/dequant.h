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

namespace kernels {
using dsi::dequantize_row;
using dsi::ggml_row_size;
}  // namespace kernels

}  // namespace dsi
