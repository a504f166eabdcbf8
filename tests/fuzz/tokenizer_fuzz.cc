// libFuzzer target for the tokenizers: arbitrary bytes are encoded with each vocabulary (the
// byte-fallback SPM vocabulary of a random model written here, and the reference vocab files
// of the outside test data when present: DSI_TESTDATA_DIR, at run time or compiled in);
// valid UTF-8 must decode back to the same bytes (except U+2581 under SPM, which decodes as a
// space). Invalid UTF-8 is only checked for not crashing and giving ids in range, and so is
// text holding a byte that the vocabulary has no symbol for: StarCoder's has none for 0xc0,
// 0xc1 and 0xf5-0xff, which valid UTF-8 never holds, nor for 0xf1, the lead byte of the
// unassigned planes 4-7 (U+40000-U+7FFFF), so those become the unknown token. Built by
// tests/fuzz/run.sh (clang only).
#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <string_view>

#include "model/gguf.h"
#include "model/random_model.h"
#include "model/tokenizer/tokenizer.h"
#include "model/tokenizer/unicode.h"

namespace {

struct Vocabs {
  std::vector<std::unique_ptr<dsi::Tokenizer>> toks;
  std::vector<std::array<bool, 256>> has_byte;  // per vocabulary: a lone byte round-trips
  Vocabs() {
    dsi::RandomModelSpec spec;
    spec.dim = 64, spec.n_layers = 1, spec.n_heads = 2, spec.n_kv_heads = 1, spec.ffn_dim = 64;
    spec.type = dsi::GgmlType::F32;
    const auto bytes = dsi::random_model_writer(spec).to_bytes();
    toks.push_back(
        dsi::Tokenizer::from_gguf(*dsi::GgufFile::parse(bytes.data(), bytes.size(), "written")));
    const char* env = std::getenv("DSI_TESTDATA_DIR");
    const std::string dir = env != nullptr && *env != '\0' ? env : DSI_TESTDATA_DIR;
    for (const char* name :
         {"ggml-vocab-llama-spm.gguf", "ggml-vocab-gpt-2.gguf", "ggml-vocab-starcoder.gguf"}) {
      const std::string path = dir + "/" + name;
      if (!std::filesystem::is_regular_file(path)) {
        std::fprintf(stderr, "tokenizer_fuzz: test data missing: %s (not fuzzed)\n", path.c_str());
        continue;
      }
      toks.push_back(dsi::Tokenizer::from_gguf(*dsi::GgufFile::open(path)));
    }
    for (const auto& tok : toks) {
      std::array<bool, 256> has{};
      for (int b = 0; b < 256; ++b) {
        const std::string one(1, static_cast<char>(b));
        has[b] = tok->decode(tok->encode(one, false, false)) == one;
      }
      has_byte.push_back(has);
    }
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Vocabs v;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  bool valid = true;
  for (size_t i = 0; i < size && valid;) {
    const size_t n = dsi::unicode::valid_sequence_length(text.substr(i));
    valid = n > 0;
    i += n;
  }
  for (size_t k = 0; k < v.toks.size(); ++k) {
    const auto& tok = v.toks[k];
    const auto ids = tok->encode(text, false, false);
    const std::string back = tok->decode(ids);
    const bool spm_space = tok->model() == "llama" && text.find("\xe2\x96\x81") != text.npos;
    bool representable = true;
    for (unsigned char c : text) representable = representable && v.has_byte[k][c];
    if (valid && representable && back != text && !spm_space) {
      std::fprintf(stderr, "round trip failed for %s (%zu bytes -> %zu ids -> %zu bytes)\n",
                   tok->model().c_str(), text.size(), ids.size(), back.size());
      std::abort();
    }
    for (dsi::Token t : ids) {
      if (t < 0 || t >= tok->vocab_size()) std::abort();
    }
    tok->decode(tok->encode(text, true, true));
  }
  return 0;
}
