// Byte-level BPE pre-tokenizers: split text into the pieces that BPE merges never cross. Each
// is a hand-written scanner that reproduces the leftmost-first matching of its reference regex
// over Unicode categories (std::regex has no \p{L}); text between matches becomes a piece of
// its own, as in Hugging Face's "Isolated" split. Not a general regex engine.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace dsi {

enum class PreType {
  // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)
  kGpt2,
  // every \p{N} on its own first, then the GPT-2 pattern ("starcoder", "smollm", "refact")
  kStarcoder,
  // (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|
  // \s*[\r\n]+|\s+(?!\S)|\s+
  kLlama3,
  // as kLlama3 but \p{N} one at a time
  kQwen2,
};

// Maps a tokenizer.ggml.pre name; returns false for a name this project does not implement.
bool pre_type_from_name(std::string_view name, PreType* out);

// Splits text into consecutive pieces (views into text) whose concatenation is text.
std::vector<std::string_view> pretokenize(PreType type, std::string_view text);

}  // namespace dsi
