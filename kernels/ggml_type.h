// Tensor element types of GGUF files (numbering of ggml's `enum ggml_type`) and their block
// layout. Only the types this project computes with are named; any other id is carried through
// as an unsupported value so that files holding them can still be inspected.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace dsi {

enum class GgmlType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  BF16 = 30,
};

// "f32", "q8_0", "q4_K", ...; "unsupported" for any other id.
const char* ggml_type_name(GgmlType t);
// For messages: the name of a supported type ("q6_K"); for another id, ggml's name of it if it
// has one and the id ("iq2_xxs (id 16)"), else "unknown type id N".
std::string ggml_type_describe(GgmlType t);
// The supported names, comma-separated (for messages).
const char* ggml_supported_types();
bool ggml_type_supported(GgmlType t);
// Elements per block (1 for the float types, 32 for Q4_0..Q8_0, 256 for the K-quants) and bytes
// per block; both 0 for an unsupported type.
int64_t ggml_block_size(GgmlType t);
size_t ggml_type_size(GgmlType t);

// Bytes taken by a row of n elements. Throws std::invalid_argument when the type is unsupported
// or n is negative or not a multiple of the block size.
size_t ggml_row_size(GgmlType t, int64_t n);

// Quantised block layouts. Scales (d, m, dmin) are IEEE half bits, little-endian. Where the
// layouts below say "element e" they count from the start of the block.

// 32-element blocks.
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
// 5-bit codes: the low 4 bits in nibbles ordered as Q4_0, bit 4 of element e is bit e of qh
// read as a little-endian 32-bit word.
struct BlockQ5_0 {
  uint16_t d;  // value = (code - 16) * d
  uint8_t qh[4];
  uint8_t qs[16];
};
struct BlockQ5_1 {
  uint16_t d;  // value = code * d + m
  uint16_t m;
  uint8_t qh[4];
  uint8_t qs[16];
};
static_assert(sizeof(BlockQ8_0) == 34 && sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_1) == 20);
static_assert(sizeof(BlockQ5_0) == 22 && sizeof(BlockQ5_1) == 24);

// 256-element super-blocks ("K-quants"), split into sub-blocks that have their own scale (and
// min), themselves quantised against the super-block's d (and dmin).
inline constexpr int64_t kSuperBlock = 256;
// 16 sub-blocks of 16. scales[s]: low nibble the scale, high nibble the min of sub-block s;
// value = (d * scale) * code - (dmin * min). 2-bit codes: element e = 128 h + 32 j + l
// (h < 2, j < 4, l < 32) is bits 2j..2j+1 of qs[32 h + l].
struct BlockQ2_K {
  uint8_t scales[16];
  uint8_t qs[64];
  uint16_t d;
  uint16_t dmin;
};
// 16 sub-blocks of 16, 6-bit signed scales (stored + 32): scale s has its low 4 bits in the
// low nibble of scales[s] (s < 8) or the high nibble of scales[s - 8], and its high 2 bits at
// bits 2 (s / 4) of scales[8 + s % 4]. Low 2 code bits as Q2_K; element e's bit e / 32 of
// hmask[e % 32] clear means subtract 4: value = (d * (scale - 32)) * (low - (hbit ? 0 : 4)).
struct BlockQ3_K {
  uint8_t hmask[32];
  uint8_t qs[64];
  uint8_t scales[12];
  uint16_t d;
};
// 8 sub-blocks of 32 with 6-bit scale and min packed in 12 bytes: for s < 4, scale = bits
// 0..5 of scales[s], min = bits 0..5 of scales[s + 4]; for s >= 4, scale = low nibble of
// scales[s + 4] | (bits 6..7 of scales[s - 4]) << 4, min = high nibble of scales[s + 4] |
// (bits 6..7 of scales[s]) << 4. value = (d * scale) * code - (dmin * min).
// 4-bit codes: element e = 64 c + 32 j + l is nibble j (0 low, 1 high) of qs[32 c + l].
struct BlockQ4_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[12];
  uint8_t qs[128];
};
// As Q4_K, plus bit 4 of element e's code at bit e / 32 of qh[e % 32].
struct BlockQ5_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[12];
  uint8_t qh[32];
  uint8_t qs[128];
};
// 16 sub-blocks of 16 with int8 scales; value = (d * scales[e / 16]) * (code - 32).
// 6-bit codes: element e = 128 h + 64 j + k (j < 2, k < 64) has its low 4 bits in nibble j
// of ql[64 h + k]; element e = 128 h + 32 i + l (i < 4, l < 32) has its high 2 bits at bits
// 2i..2i+1 of qh[32 h + l].
struct BlockQ6_K {
  uint8_t ql[128];
  uint8_t qh[64];
  int8_t scales[16];
  uint16_t d;
};
static_assert(sizeof(BlockQ2_K) == 84 && sizeof(BlockQ3_K) == 110 && sizeof(BlockQ4_K) == 144);
static_assert(sizeof(BlockQ5_K) == 176 && sizeof(BlockQ6_K) == 210);

}  // namespace dsi
