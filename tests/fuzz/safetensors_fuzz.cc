// libFuzzer target for the safetensors reader: any input opens or throws ModelError, and the
// tensors of a file that opens lie inside it. Built by tests/fuzz/run.sh (clang only).
#include <cstdlib>

#include "model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto f = dsi::SafetensorsFile::parse(data, size, "fuzz.safetensors");
    for (const auto& t : f->tensors()) {
      if (t.data < data || t.data + t.nbytes > data + size) std::abort();
      if (t.nbytes <= (1u << 20)) {
        try {
          f->to_float(t);
        } catch (const dsi::ModelError&) {
        }
      }
    }
  } catch (const dsi::ModelError&) {
  }
  return 0;
}
