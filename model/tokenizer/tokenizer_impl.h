// The two Tokenizer implementations; private to model/tokenizer (use Tokenizer::from_*).
#pragma once

#include <array>
#include <cstdint>
#include <unordered_map>

#include "model/tokenizer/pretokenize.h"
#include "model/tokenizer/tokenizer.h"

namespace dsi {

// SentencePiece BPE: starting from single code points, repeatedly merge the adjacent pair
// whose concatenation is the vocabulary piece with the highest score (leftmost on ties);
// code points that end up in no piece fall back to <0xNN> byte tokens.
class SpmTokenizer : public Tokenizer {
 public:
  explicit SpmTokenizer(VocabData v);

 protected:
  void encode_fragment(std::string_view text, bool at_start,
                       std::vector<Token>& out) const override;
  std::string normal_piece(Token t) const override;

 private:
  std::unordered_map<std::string_view, Token> piece_to_id_;  // mergeable pieces only
  std::array<Token, 256> byte_token_;                        // -1 where the vocab has none
};

// Byte-level BPE (GPT-2): pre-tokenize, map each byte to a printable code point, then merge
// adjacent symbols by merge rank (lowest first, leftmost on ties).
class BpeTokenizer : public Tokenizer {
 public:
  explicit BpeTokenizer(VocabData v);

 protected:
  void encode_fragment(std::string_view text, bool at_start,
                       std::vector<Token>& out) const override;
  std::string normal_piece(Token t) const override;

 private:
  void encode_word(std::string_view word, std::vector<Token>& out) const;

  PreType pre_type_;
  struct Merge {
    int32_t rank;
    Token result;
  };
  std::unordered_map<uint64_t, Merge> merges_;  // (left id << 32 | right id)
  std::array<Token, 256> byte_symbol_;          // token of each byte's mapped code point
  std::array<uint32_t, 256> byte_to_cp_;
  std::unordered_map<uint32_t, uint8_t> cp_to_byte_;
};

}  // namespace dsi
