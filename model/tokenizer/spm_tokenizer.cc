// SentencePiece-style BPE by piece score (the "llama" vocabulary of GGUF files).
#include <cstdio>
#include <queue>

#include <fmt/format.h>

#include "model/tokenizer/tokenizer_impl.h"
#include "model/tokenizer/unicode.h"

namespace dsi {

namespace {

constexpr std::string_view kSpaceMark = "\xe2\x96\x81";  // U+2581, SentencePiece's space

}  // namespace

SpmTokenizer::SpmTokenizer(VocabData v) : Tokenizer(std::move(v)) {
  if (v_.scores.size() != v_.tokens.size()) {
    throw ModelError(fmt::format("{}: SPM vocabulary has {} scores for {} tokens", v_.source,
                                 v_.scores.size(), v_.tokens.size()));
  }
  byte_token_.fill(-1);
  for (size_t i = 0; i < v_.tokens.size(); ++i) {
    const int32_t type = v_.types[i];
    // Control, unknown, unused and byte tokens are not pieces that text can merge into:
    // typing "<s>" or "<0x41>" must not produce those tokens.
    if (type == kTokenNormal || type == kTokenUserDefined) {
      piece_to_id_.emplace(v_.tokens[i], static_cast<Token>(i));
    }
    if (type == kTokenByte) {
      const std::string& s = v_.tokens[i];
      unsigned b = 0;
      if (s.size() == 6 && std::sscanf(s.c_str(), "<0x%2X>", &b) == 1 && b < 256) {
        byte_token_[b] = static_cast<Token>(i);
      }
    }
  }
}

void SpmTokenizer::encode_fragment(std::string_view text, bool at_start,
                                   std::vector<Token>& out) const {
  std::string s;
  s.reserve(text.size() + 8);
  if (at_start && v_.add_space_prefix) s += kSpaceMark;
  for (char c : text) {
    if (c == ' ')
      s += kSpaceMark;
    else
      s += c;
  }

  struct Symbol {
    int prev, next;
    uint32_t off, len;  // bytes of s; len 0 once merged into its left neighbour
  };
  std::vector<Symbol> sym;
  for (const auto& cp : unicode::decode_utf8(s)) {
    const int i = static_cast<int>(sym.size());
    sym.push_back({i - 1, i + 1, cp.offset, cp.len});
  }
  if (sym.empty()) return;
  sym.back().next = -1;

  struct Bigram {
    int left, right;
    float score;
    uint32_t len;
  };
  // Highest score first; on equal scores the leftmost pair.
  auto lower = [](const Bigram& a, const Bigram& b) {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  };
  std::priority_queue<Bigram, std::vector<Bigram>, decltype(lower)> queue(lower);
  auto try_add = [&](int left, int right) {
    if (left < 0 || right < 0) return;
    const uint32_t len = sym[left].len + sym[right].len;
    auto it = piece_to_id_.find(std::string_view(s).substr(sym[left].off, len));
    if (it == piece_to_id_.end()) return;
    queue.push({left, right, v_.scores[it->second], len});
  };
  for (size_t i = 1; i < sym.size(); ++i) try_add(static_cast<int>(i) - 1, static_cast<int>(i));

  while (!queue.empty()) {
    const Bigram b = queue.top();
    queue.pop();
    Symbol& l = sym[b.left];
    Symbol& r = sym[b.right];
    // Stale entries: one side was merged away or grew since the pair was queued.
    if (l.len == 0 || r.len == 0 || l.len + r.len != b.len || l.next != b.right) continue;
    l.len += r.len;
    r.len = 0;
    l.next = r.next;
    if (r.next >= 0) sym[r.next].prev = b.left;
    try_add(l.prev, b.left);
    try_add(b.left, l.next);
  }

  for (int i = 0; i >= 0; i = sym[i].next) {
    const std::string_view piece = std::string_view(s).substr(sym[i].off, sym[i].len);
    if (auto it = piece_to_id_.find(piece); it != piece_to_id_.end()) {
      out.push_back(it->second);
      continue;
    }
    for (char c : piece) {
      const Token t = byte_token_[static_cast<uint8_t>(c)];
      if (t >= 0)
        out.push_back(t);
      else if (v_.unk >= 0)
        out.push_back(v_.unk);
    }
  }
}

std::string SpmTokenizer::normal_piece(Token t) const {
  const std::string& text = v_.tokens[t];
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    if (text.compare(i, kSpaceMark.size(), kSpaceMark) == 0) {
      out += ' ';
      i += kSpaceMark.size();
    } else {
      out += text[i++];
    }
  }
  return out;
}

}  // namespace dsi
