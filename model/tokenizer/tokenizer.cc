// Tokenizer pieces shared by both vocabulary kinds: loading from GGUF, special-token
// partitioning, decoding, end-of-generation tokens and streaming.
#include "model/tokenizer/tokenizer.h"

#include <algorithm>

#include <fmt/format.h>

#include "model/tokenizer/tokenizer_impl.h"
#include "model/tokenizer/unicode.h"

namespace dsi {

namespace {

// Texts of the tokens that end a turn in the chat models this project targets.
constexpr std::string_view kEogTexts[] = {"<|eot_id|>", "<|im_end|>",    "<|end|>", "<end_of_turn>",
                                          "<|eom_id|>", "<|endoftext|>", "<EOT>"};

// "<0x0A>" -> 10, or -1.
int parse_byte_token(std::string_view s) {
  if (s.size() != 6 || s.substr(0, 3) != "<0x" || s[5] != '>') return -1;
  int v = 0;
  for (char c : s.substr(3, 2)) {
    v <<= 4;
    if (c >= '0' && c <= '9')
      v |= c - '0';
    else if (c >= 'A' && c <= 'F')
      v |= c - 'A' + 10;
    else if (c >= 'a' && c <= 'f')
      v |= c - 'a' + 10;
    else
      return -1;
  }
  return v;
}

}  // namespace

Tokenizer::Tokenizer(VocabData v) : v_(std::move(v)) {
  const size_t n = v_.tokens.size();
  if (n == 0) throw ModelError(fmt::format("{}: the vocabulary is empty", v_.source));
  if (n > (1u << 30)) throw ModelError(fmt::format("{}: vocabulary of {} tokens", v_.source, n));
  if (v_.types.empty()) v_.types.assign(n, kTokenNormal);
  if (v_.types.size() != n) {
    throw ModelError(
        fmt::format("{}: {} token types for {} tokens", v_.source, v_.types.size(), n));
  }
  auto check_id = [&](Token id, const char* what) {
    if (id < -1 || id >= static_cast<Token>(n)) {
      throw ModelError(fmt::format("{}: {} token id {} is outside the vocabulary of {}", v_.source,
                                   what, id, n));
    }
  };
  check_id(v_.bos, "bos");
  check_id(v_.eos, "eos");
  check_id(v_.unk, "unknown");
  for (Token t : v_.extra_eog) check_id(t, "end-of-generation");
  token_to_id_.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    token_to_id_.emplace(v_.tokens[i], static_cast<Token>(i));  // first one wins on duplicates
    const int32_t type = v_.types[i];
    const bool special =
        type == kTokenControl || type == kTokenUnknown || type == kTokenUserDefined;
    if (special && !v_.tokens[i].empty()) {
      specials_by_byte_[static_cast<uint8_t>(v_.tokens[i][0])].push_back(static_cast<Token>(i));
    }
    if (type == kTokenControl) {
      for (std::string_view e : kEogTexts) {
        if (v_.tokens[i] == e) v_.extra_eog.push_back(static_cast<Token>(i));
      }
    }
  }
  for (auto& bucket : specials_by_byte_) {
    std::stable_sort(bucket.begin(), bucket.end(),
                     [&](Token a, Token b) { return v_.tokens[a].size() > v_.tokens[b].size(); });
  }
}

Tokenizer::~Tokenizer() = default;

std::unique_ptr<Tokenizer> Tokenizer::from_vocab(VocabData v) {
  if (v.model == "llama") return std::make_unique<SpmTokenizer>(std::move(v));
  if (v.model == "gpt2") return std::make_unique<BpeTokenizer>(std::move(v));
  throw ModelError(fmt::format("{}: tokenizer model '{}' is not supported (llama, gpt2 are)",
                               v.source, v.model));
}

std::unique_ptr<Tokenizer> Tokenizer::from_gguf(const GgufFile& f) {
  VocabData v;
  v.source = f.path();
  v.model = f.get_string("tokenizer.ggml.model");
  const bool spm = v.model == "llama";
  // llama.cpp's "default" BPE pre-tokenizer is a regex list of its own, not GPT-2's: a file
  // without the key is refused by name rather than tokenized almost right.
  v.pre = f.has("tokenizer.ggml.pre") ? f.get_string("tokenizer.ggml.pre") : "default";
  v.tokens = f.get_strings("tokenizer.ggml.tokens");
  if (f.has("tokenizer.ggml.scores")) v.scores = f.get_floats("tokenizer.ggml.scores");
  if (f.has("tokenizer.ggml.token_type")) v.types = f.get_ints("tokenizer.ggml.token_type");
  if (f.has("tokenizer.ggml.merges")) {
    for (const std::string& m : f.get_strings("tokenizer.ggml.merges")) {
      const size_t sp = m.find(' ', 1);
      if (sp == std::string::npos) {
        throw ModelError(
            fmt::format("{}: key 'tokenizer.ggml.merges': merge '{}' has no space", f.path(), m));
      }
      v.merges.emplace_back(m.substr(0, sp), m.substr(sp + 1));
    }
  }
  auto id = [&](const char* key, int64_t fallback) -> Token {
    const int64_t x = f.get_int(key, fallback);
    if (x < -1 || x >= static_cast<int64_t>(v.tokens.size())) {
      throw ModelError(fmt::format("{}: key '{}': token id {} is outside the vocabulary of {}",
                                   f.path(), key, x, v.tokens.size()));
    }
    return static_cast<Token>(x);
  };
  v.bos = id("tokenizer.ggml.bos_token_id", spm ? 1 : -1);
  v.eos = id("tokenizer.ggml.eos_token_id", spm ? 2 : -1);
  v.unk = id("tokenizer.ggml.unknown_token_id", spm ? 0 : -1);
  for (const char* key : {"tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"}) {
    if (f.has(key)) v.extra_eog.push_back(id(key, -1));
  }
  v.add_bos = f.get_bool("tokenizer.ggml.add_bos_token", spm);
  v.add_eos = f.get_bool("tokenizer.ggml.add_eos_token", false);
  v.add_space_prefix = f.get_bool("tokenizer.ggml.add_space_prefix", spm);
  return from_vocab(std::move(v));
}

std::vector<Token> Tokenizer::encode(std::string_view text, bool add_special,
                                     bool parse_special) const {
  std::vector<Token> out;
  if (add_special && v_.add_bos && v_.bos >= 0) out.push_back(v_.bos);
  size_t frag = 0;
  bool at_start = true;
  size_t pos = 0;
  while (pos < text.size()) {
    Token hit = -1;
    for (Token t : specials_by_byte_[static_cast<uint8_t>(text[pos])]) {
      if (!parse_special && v_.types[t] != kTokenUserDefined) continue;
      if (text.substr(pos, v_.tokens[t].size()) == v_.tokens[t]) {
        hit = t;
        break;
      }
    }
    if (hit < 0) {
      ++pos;
      continue;
    }
    if (frag < pos) encode_fragment(text.substr(frag, pos - frag), at_start, out);
    out.push_back(hit);
    at_start = true;  // SPM puts its space prefix after a special token too
    pos += v_.tokens[hit].size();
    frag = pos;
  }
  if (frag < text.size()) encode_fragment(text.substr(frag), at_start, out);
  if (add_special && v_.add_eos && v_.eos >= 0) out.push_back(v_.eos);
  return out;
}

std::string Tokenizer::token_to_piece(Token t) const {
  if (t < 0 || t >= vocab_size()) return {};
  switch (v_.types[t]) {
    case kTokenControl:
      return {};
    case kTokenByte: {
      const int b = parse_byte_token(v_.tokens[t]);
      return b < 0 ? v_.tokens[t] : std::string(1, static_cast<char>(b));
    }
    case kTokenUnknown:
    case kTokenUserDefined:
      return v_.tokens[t];
    default:
      return normal_piece(t);
  }
}

std::string Tokenizer::decode(std::span<const Token> ids) const {
  std::string out;
  bool at_start = true;
  for (Token t : ids) {
    std::string piece = token_to_piece(t);
    if (piece.empty()) continue;
    if (at_start && v_.add_space_prefix && piece[0] == ' ') piece.erase(0, 1);
    at_start = false;
    out += piece;
  }
  return out;
}

const std::string& Tokenizer::token_text(Token t) const {
  static const std::string kEmpty;
  return t >= 0 && t < vocab_size() ? v_.tokens[t] : kEmpty;
}

Token Tokenizer::token_id(std::string_view text) const {
  auto it = token_to_id_.find(text);
  return it == token_to_id_.end() ? -1 : it->second;
}

int32_t Tokenizer::token_type(Token t) const {
  return t >= 0 && t < vocab_size() ? v_.types[t] : 0;
}

bool Tokenizer::is_eog(Token t) const {
  if (t < 0) return false;
  return t == v_.eos ||
         std::find(v_.extra_eog.begin(), v_.extra_eog.end(), t) != v_.extra_eog.end();
}

std::string StreamDecoder::push(Token t) {
  std::string piece = tok_.token_to_piece(t);
  if (piece.empty()) return {};
  if (at_start_ && tok_.add_space_prefix() && piece[0] == ' ') piece.erase(0, 1);
  at_start_ = false;
  pending_ += piece;
  // Release everything up to an incomplete sequence at the very end; invalid bytes that no
  // later byte can repair go out as they are.
  size_t i = 0;
  while (i < pending_.size()) {
    const std::string_view rest = std::string_view(pending_).substr(i);
    if (size_t n = unicode::valid_sequence_length(rest)) {
      i += n;
      continue;
    }
    const size_t want = unicode::sequence_length(static_cast<uint8_t>(rest[0]));
    bool prefix = want > rest.size();
    for (size_t k = 1; prefix && k < rest.size(); ++k) {
      prefix = (static_cast<uint8_t>(rest[k]) & 0xc0) == 0x80;
    }
    if (prefix) break;
    ++i;
  }
  std::string out = pending_.substr(0, i);
  pending_.erase(0, i);
  return out;
}

std::string StreamDecoder::flush() {
  std::string out;
  out.swap(pending_);
  return out;
}

}  // namespace dsi
