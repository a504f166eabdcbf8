// libFuzzer target for the tokenizers: arbitrary bytes are encoded with each test vocabulary;
// valid UTF-8 must decode back to the same bytes (except U+2581 under SPM, which decodes as a
// space). Invalid UTF-8 is only checked for not crashing and giving ids in range: StarCoder's
// vocabulary has no symbol for bytes such as 0xff that valid UTF-8 never holds, so they become
// the unknown token. Built by tests/fuzz/run.sh (clang only).
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "model/gguf.h"
#include "model/tokenizer/tokenizer.h"
#include "model/tokenizer/unicode.h"

namespace {

struct Vocabs {
  std::vector<std::unique_ptr<dsi::Tokenizer>> toks;
  Vocabs() {
    for (const char* name :
         {"ggml-vocab-llama-spm.gguf", "ggml-vocab-gpt-2.gguf", "ggml-vocab-starcoder.gguf"}) {
      auto f = dsi::GgufFile::open(std::string(DSI_TESTDATA_DIR) + "/" + name);
      toks.push_back(dsi::Tokenizer::from_gguf(*f));
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
  for (const auto& tok : v.toks) {
    const auto ids = tok->encode(text, false, false);
    const std::string back = tok->decode(ids);
    const bool spm_space = tok->model() == "llama" && text.find("\xe2\x96\x81") != text.npos;
    if (valid && back != text && !spm_space) {
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
