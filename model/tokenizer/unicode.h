// The small slice of Unicode the tokenizers need: UTF-8 decoding that never fails (a byte
// that does not start a valid sequence becomes a code point of its own), UTF-8 encoding, and
// the letter / number / white-space classes behind \p{L}, \p{N} and \s. No normalisation.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace dsi::unicode {

enum CategoryFlag : uint8_t { kLetter = 1, kNumber = 2, kSpace = 4 };

struct CategoryRange {
  uint32_t first;
  uint32_t last;
  uint8_t flags;
};
extern const CategoryRange kCategoryRanges[];  // unicode_tables.cc (generated)
extern const size_t kNumCategoryRanges;

// Bitwise OR of CategoryFlag for cp (0 for everything else: marks, punctuation, symbols...).
uint8_t category(uint32_t cp);
inline bool is_letter(uint32_t cp) {
  return category(cp) & kLetter;
}
inline bool is_number(uint32_t cp) {
  return category(cp) & kNumber;
}
inline bool is_space(uint32_t cp) {
  return category(cp) & kSpace;
}

// Stands for a byte that is not part of a valid UTF-8 sequence: outside Unicode, so it is
// never a letter, number or space, and keeps one byte of the input.
inline constexpr uint32_t kInvalid = 0x110000;

struct CodePoint {
  uint32_t cp;      // kInvalid for a stray byte
  uint32_t offset;  // byte offset in the input
  uint32_t len;     // bytes in the input (1..4)
};
std::vector<CodePoint> decode_utf8(std::string_view s);

// Length of the valid UTF-8 sequence at the start of s, 0 if s starts with an invalid one.
size_t valid_sequence_length(std::string_view s);
// Expected length of a sequence starting with this byte (1..4), 0 for a continuation or
// invalid lead byte.
size_t sequence_length(uint8_t lead);

void append_utf8(std::string& out, uint32_t cp);

}  // namespace dsi::unicode
