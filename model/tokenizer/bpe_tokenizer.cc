// Byte-level BPE by merge rank (the "gpt2" vocabulary of GGUF files and Hugging Face
// tokenizer.json files with a ByteLevel pre-tokenizer).
#include <queue>

#include <fmt/format.h>

#include "model/tokenizer/tokenizer_impl.h"
#include "model/tokenizer/unicode.h"

namespace dsi {

BpeTokenizer::BpeTokenizer(VocabData v) : Tokenizer(std::move(v)) {
  if (!pre_type_from_name(v_.pre, &pre_type_)) {
    throw ModelError(fmt::format(
        "{}: pre-tokenizer '{}' is not supported (gpt-2, starcoder, smollm, llama-bpe, qwen2 are)",
        v_.source, v_.pre));
  }
  // GPT-2's byte -> code point table: printable Latin-1 bytes stand for themselves, the
  // others (controls, space, 0x7f-0xa0, 0xad) take 256, 257, ... in byte order.
  uint32_t next = 256;
  for (uint32_t b = 0; b < 256; ++b) {
    const bool printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
    byte_to_cp_[b] = printable ? b : next++;
    cp_to_byte_[byte_to_cp_[b]] = static_cast<uint8_t>(b);
    std::string s;
    unicode::append_utf8(s, byte_to_cp_[b]);
    byte_symbol_[b] = token_id(s);
  }
  merges_.reserve(v_.merges.size());
  for (size_t r = 0; r < v_.merges.size(); ++r) {
    const auto& [a, b] = v_.merges[r];
    const Token ia = token_id(a), ib = token_id(b), im = token_id(a + b);
    if (ia < 0 || ib < 0 || im < 0) continue;  // a merge that cannot produce a token is inert
    const uint64_t key =
        (static_cast<uint64_t>(static_cast<uint32_t>(ia)) << 32) | static_cast<uint32_t>(ib);
    merges_.emplace(key, Merge{static_cast<int32_t>(r), im});  // lowest rank wins
  }
}

void BpeTokenizer::encode_fragment(std::string_view text, bool /*at_start*/,
                                   std::vector<Token>& out) const {
  for (std::string_view word : pretokenize(pre_type_, text)) encode_word(word, out);
}

void BpeTokenizer::encode_word(std::string_view word, std::vector<Token>& out) const {
  // Llama 3 tokenizers set ignore_merges: a word that is itself a token is taken whole even
  // where the merges would split it. Elsewhere that shortcut could change the result.
  if (pre_type_ == PreType::kLlama3) {
    std::string mapped;
    for (char c : word) unicode::append_utf8(mapped, byte_to_cp_[static_cast<uint8_t>(c)]);
    if (Token t = token_id(mapped); t >= 0) {
      out.push_back(t);
      return;
    }
  }

  struct Symbol {
    Token id;
    int prev, next;
  };
  std::vector<Symbol> sym;
  sym.reserve(word.size());
  for (char c : word) {
    const int i = static_cast<int>(sym.size());
    sym.push_back({byte_symbol_[static_cast<uint8_t>(c)], i - 1, i + 1});
  }
  if (sym.empty()) return;
  sym.back().next = -1;

  struct Pair {
    int32_t rank;
    int left, right;
    Token lid, rid;
  };
  // Lowest rank first; on equal ranks the leftmost pair.
  auto later = [](const Pair& a, const Pair& b) {
    return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
  };
  std::priority_queue<Pair, std::vector<Pair>, decltype(later)> queue(later);
  auto try_add = [&](int left, int right) {
    if (left < 0 || right < 0 || sym[left].id < 0 || sym[right].id < 0) return;
    const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(sym[left].id)) << 32) |
                         static_cast<uint32_t>(sym[right].id);
    auto it = merges_.find(key);
    if (it != merges_.end())
      queue.push({it->second.rank, left, right, sym[left].id, sym[right].id});
  };
  for (size_t i = 1; i < sym.size(); ++i) try_add(static_cast<int>(i) - 1, static_cast<int>(i));

  while (!queue.empty()) {
    const Pair p = queue.top();
    queue.pop();
    Symbol& l = sym[p.left];
    Symbol& r = sym[p.right];
    if (l.id != p.lid || r.id != p.rid || l.next != p.right) continue;  // stale
    const uint64_t key =
        (static_cast<uint64_t>(static_cast<uint32_t>(p.lid)) << 32) | static_cast<uint32_t>(p.rid);
    l.id = merges_.at(key).result;
    r.id = -2;  // merged away
    l.next = r.next;
    if (r.next >= 0) sym[r.next].prev = p.left;
    try_add(l.prev, p.left);
    try_add(p.left, l.next);
  }
  for (int i = 0; i >= 0; i = sym[i].next) {
    if (sym[i].id >= 0)
      out.push_back(sym[i].id);
    else if (v_.unk >= 0)
      out.push_back(v_.unk);  // a byte the vocabulary lacks
  }
}

std::string BpeTokenizer::normal_piece(Token t) const {
  std::string out;
  for (const auto& cp : unicode::decode_utf8(v_.tokens[t])) {
    auto it = cp_to_byte_.find(cp.cp);
    if (it != cp_to_byte_.end())
      out += static_cast<char>(it->second);
    else
      out.append(v_.tokens[t], cp.offset, cp.len);  // not byte-mapped: keep the text
  }
  return out;
}

}  // namespace dsi
