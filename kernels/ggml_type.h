// Tensor element types of GGUF files (numbering of ggml's `enum ggml_type`) and their block
// layout. Only the types this project computes with are named; any other id is carried through
// as an unsupported value so that files holding them can still be inspected.
#pragma once

#include <cstddef>
#include <cstdint>

namespace dsi {

enum class GgmlType : uint32_t { F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q8_0 = 8, BF16 = 30 };

// "f32", "q8_0", ...; "unsupported" for any other id.
const char* ggml_type_name(GgmlType t);
bool ggml_type_supported(GgmlType t);
// Elements per block (1 for the float types, 32 for the quantised ones) and bytes per block;
// both 0 for an unsupported type.
int64_t ggml_block_size(GgmlType t);
size_t ggml_type_size(GgmlType t);

// Bytes taken by a row of n elements. Throws std::invalid_argument when the type is unsupported
// or n is negative or not a multiple of the block size.
size_t ggml_row_size(GgmlType t, int64_t n);

// Quantised block layouts (32 elements each). Scales are IEEE half bits, little-endian.
inline constexpr int64_t kQuantBlock = 32;
struct BlockQ8_0 {
  uint16_t d;  // scale: value = d * qs[i]
  int8_t qs[32];
};
struct BlockQ4_0 {
  uint16_t d;  // value = (nibble - 8) * d; low nibbles are elements 0..15, high 16..31
  uint8_t qs[16];
};
struct BlockQ4_1 {
  uint16_t d;  // value = nibble * d + m; nibble order as Q4_0
  uint16_t m;
  uint8_t qs[16];
};
static_assert(sizeof(BlockQ8_0) == 34 && sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_1) == 20);

}  // namespace dsi
