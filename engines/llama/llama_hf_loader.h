// Builds a LlamaModel from a Hugging Face model folder (config.json + model.safetensors or
// sharded safetensors) for LlamaForCausalLM / MistralForCausalLM / Qwen2ForCausalLM. HF keeps
// q/k rows in the half-split RoPE order, so these models run with RopeLayout::kHalfSplit.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "engines/llama/llama_model.h"

namespace dsi {

// Loads the config and the weights of `layers` (all when empty) from `dir`. Throws ModelError
// naming the tensor and its expected and actual shape for a missing or misshapen tensor, or an
// unsupported model type or rope scaling.
std::shared_ptr<LlamaModel> load_llama_safetensors(const std::string& dir,
                                                   const std::vector<int>& layers = {});

}  // namespace dsi
