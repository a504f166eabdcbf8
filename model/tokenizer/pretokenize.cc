// Scanners for the pre-tokenizer patterns. Each match_* returns the end of the match that the
// reference regex would find at code point i, or i when no alternative matches there. The
// alternatives are tried in the regex's order, and greedy quantifiers followed by a lookahead
// are resolved by the same backtracking the regex engine does (noted at each place).
#include "model/tokenizer/pretokenize.h"

#include "model/tokenizer/unicode.h"

namespace dsi {

namespace {

using unicode::CodePoint;

struct Text {
  const std::vector<CodePoint>& cps;
  size_t n() const { return cps.size(); }
  uint32_t at(size_t i) const { return cps[i].cp; }
  bool letter(size_t i) const { return i < n() && unicode::is_letter(at(i)); }
  bool number(size_t i) const { return i < n() && unicode::is_number(at(i)); }
  bool space(size_t i) const { return i < n() && unicode::is_space(at(i)); }
  // [^\s\p{L}\p{N}]
  bool other(size_t i) const { return i < n() && unicode::category(at(i)) == 0; }
  bool newline(size_t i) const { return i < n() && (at(i) == '\r' || at(i) == '\n'); }
  bool is(size_t i, uint32_t c) const { return i < n() && at(i) == c; }
  bool is_ci(size_t i, char lower) const {
    return i < n() && at(i) < 0x80 && (at(i) | 0x20) == static_cast<uint32_t>(lower);
  }
};

// 's|'t|'re|'ve|'m|'ll|'d, optionally case-insensitive.
size_t match_contraction(const Text& t, size_t i, bool ci) {
  if (!t.is(i, '\'')) return i;
  auto eq = [&](size_t k, char c) { return ci ? t.is_ci(k, c) : t.is(k, c); };
  if (eq(i + 1, 's') || eq(i + 1, 't') || eq(i + 1, 'm') || eq(i + 1, 'd')) return i + 2;
  if ((eq(i + 1, 'r') && eq(i + 2, 'e')) || (eq(i + 1, 'v') && eq(i + 2, 'e')) ||
      (eq(i + 1, 'l') && eq(i + 2, 'l'))) {
    return i + 3;
  }
  return i;
}

// \s+(?!\S): the whole run at the end of text; otherwise the run minus its last code point,
// which the backtracking leaves to prefix the next piece (no match for a run of one).
size_t match_trailing_space(const Text& t, size_t i) {
  size_t k = i;
  while (t.space(k)) ++k;
  if (k == i) return i;
  if (k == t.n()) return k;
  return k - i >= 2 ? k - 1 : i;
}

size_t match_gpt2(const Text& t, size_t i) {
  if (size_t e = match_contraction(t, i, false); e != i) return e;
  const size_t j = t.is(i, ' ') ? i + 1 : i;  // " ?" prefix of the next three alternatives
  if (t.letter(j)) {
    size_t k = j;
    while (t.letter(k)) ++k;
    return k;
  }
  if (t.number(j)) {
    size_t k = j;
    while (t.number(k)) ++k;
    return k;
  }
  if (t.other(j)) {
    size_t k = j;
    while (t.other(k)) ++k;
    return k;
  }
  return match_trailing_space(t, i);
}

size_t match_llama3(const Text& t, size_t i, size_t max_digits) {
  if (size_t e = match_contraction(t, i, true); e != i) return e;
  // [^\r\n\p{L}\p{N}]?\p{L}+
  if (t.letter(i)) {
    size_t k = i;
    while (t.letter(k)) ++k;
    return k;
  }
  if (i < t.n() && !t.newline(i) && !t.number(i) && t.letter(i + 1)) {
    size_t k = i + 1;
    while (t.letter(k)) ++k;
    return k;
  }
  // \p{N}{1,3}
  if (t.number(i)) {
    size_t k = i;
    while (t.number(k) && k - i < max_digits) ++k;
    return k;
  }
  // " ?[^\s\p{L}\p{N}]+[\r\n]*"
  {
    const size_t j = t.is(i, ' ') ? i + 1 : i;
    if (t.other(j)) {
      size_t k = j;
      while (t.other(k)) ++k;
      while (t.newline(k)) ++k;
      return k;
    }
  }
  size_t k = i;
  while (t.space(k)) ++k;
  if (k == i) return i;
  // \s*[\r\n]+: greedy \s* backs off to the last newline of the run, which [\r\n]+ then takes.
  for (size_t p = k; p > i; --p) {
    if (t.newline(p - 1)) return p;
  }
  // \s+(?!\S), then \s+ for a single white-space code point before a non-space.
  if (size_t e = match_trailing_space(t, i); e != i) return e;
  return k;
}

template <typename Match>
void split(const std::vector<CodePoint>& cps, size_t begin, size_t end, std::string_view text,
           Match match, std::vector<std::string_view>& out) {
  auto emit = [&](size_t a, size_t b) {  // code point range [a, b)
    if (a < b) {
      const size_t off = cps[a].offset;
      out.push_back(text.substr(off, cps[b - 1].offset + cps[b - 1].len - off));
    }
  };
  const std::vector<CodePoint> sub(cps.begin() + begin, cps.begin() + end);
  const Text t{sub};
  size_t gap = 0;  // start of text not covered by any match
  size_t i = 0;
  while (i < t.n()) {
    const size_t e = match(t, i);
    if (e == i) {
      ++i;
      continue;
    }
    emit(begin + gap, begin + i);
    emit(begin + i, begin + e);
    i = gap = e;
  }
  emit(begin + gap, begin + t.n());
}

}  // namespace

bool pre_type_from_name(std::string_view name, PreType* out) {
  if (name == "gpt-2" || name == "gpt2") {
    *out = PreType::kGpt2;
  } else if (name == "starcoder" || name == "smollm" || name == "refact") {
    *out = PreType::kStarcoder;
  } else if (name == "llama-bpe" || name == "llama3") {
    *out = PreType::kLlama3;
  } else if (name == "qwen2") {
    *out = PreType::kQwen2;
  } else {
    return false;
  }
  return true;
}

std::vector<std::string_view> pretokenize(PreType type, std::string_view text) {
  const std::vector<CodePoint> cps = unicode::decode_utf8(text);
  std::vector<std::string_view> out;
  switch (type) {
    case PreType::kGpt2:
      split(cps, 0, cps.size(), text, match_gpt2, out);
      break;
    case PreType::kStarcoder: {
      size_t a = 0;
      for (size_t i = 0; i <= cps.size(); ++i) {
        if (i == cps.size() || unicode::is_number(cps[i].cp)) {
          split(cps, a, i, text, match_gpt2, out);
          if (i < cps.size()) out.push_back(text.substr(cps[i].offset, cps[i].len));
          a = i + 1;
        }
      }
      break;
    }
    case PreType::kLlama3:
      split(
          cps, 0, cps.size(), text, [](const Text& t, size_t i) { return match_llama3(t, i, 3); },
          out);
      break;
    case PreType::kQwen2:
      split(
          cps, 0, cps.size(), text, [](const Text& t, size_t i) { return match_llama3(t, i, 1); },
          out);
      break;
  }
  return out;
}

}  // namespace dsi
