// The one exception type for problems with model files (GGUF, safetensors, config.json,
// tokenizer.json): the message names the file and the key or tensor at fault. It is not used for
// programming errors inside the engine.
#pragma once

#include <stdexcept>

namespace dsi {

struct ModelError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace dsi
