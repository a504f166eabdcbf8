// Builds a LlamaModel from a GGUF file (architectures "llama" and "qwen2"): hyperparameters
// from the metadata; weight matrices used in place, in their GGUF types (the model keeps the
// file mapped); norms and biases as float32. Names and shapes are checked
// against the hyperparameters before anything is used.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "engines/llama/llama_model.h"
#include "model/gguf.h"

namespace dsi {

// Hyperparameters of a llama/qwen2 GGUF. Throws ModelError for a missing key, an
// unsupported architecture or rope scaling, or inconsistent sizes.
LlamaConfig llama_config_from_gguf(const GgufFile& file);

// Loads the config and the weights of `layers` (all layers when empty; the others stay
// unloaded). Throws ModelError naming the tensor and its expected and actual shape for a
// missing or misshapen tensor, or its type when the engine cannot compute with it;
// std::invalid_argument for a layer the file does not have. Nothing is read but the header:
// the tensors' pages come in as a forward first touches them.
std::shared_ptr<LlamaModel> load_llama_gguf(const std::string& path,
                                            const std::vector<int>& layers = {});
// The model keeps `file` (and so its mapping) alive.
std::shared_ptr<LlamaModel> load_llama_gguf(std::shared_ptr<const GgufFile> file,
                                            const std::vector<int>& layers = {});

}  // namespace dsi
