// libFuzzer target for the GGUF reader and everything built on it (metadata getters, dequant,
// tokenizer loading). The only exception allowed out of the library is ModelError; anything
// else escapes the harness and counts as a crash. Built by tests/fuzz/run.sh (clang only).
#include <cstddef>
#include <cstdint>

#include "model/gguf.h"
#include "model/tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using dsi::ModelError;
  std::unique_ptr<dsi::GgufFile> f;
  try {
    f = dsi::GgufFile::parse(data, size, "fuzz.gguf");
  } catch (const ModelError&) {
    return 0;
  }
  for (const auto& k : f->keys()) {
    try {
      f->get_string(k);
    } catch (const ModelError&) {
    }
    try {
      f->get_int(k);
    } catch (const ModelError&) {
    }
    try {
      f->get_float(k);
    } catch (const ModelError&) {
    }
    try {
      f->get_bool(k, false);
    } catch (const ModelError&) {
    }
    try {
      f->get_strings(k);
    } catch (const ModelError&) {
    }
    try {
      f->get_ints(k);
    } catch (const ModelError&) {
    }
    try {
      f->get_floats(k);
    } catch (const ModelError&) {
    }
  }
  for (const auto& t : f->tensors()) {
    if (t.nbytes > (1u << 20)) continue;  // keep each run fast; bounds are checked anyway
    try {
      f->dequantize(t);
    } catch (const ModelError&) {
    }
  }
  try {
    auto tok = dsi::Tokenizer::from_gguf(*f);
    const auto ids =
        tok->encode("Hello world! 12345 <s> <|endoftext|> \xf0\x9f\xa6\x99", true, true);
    tok->decode(ids);
    dsi::StreamDecoder sd(*tok);
    for (auto id : ids) sd.push(id);
    sd.flush();
  } catch (const ModelError&) {
  }
  return 0;
}
