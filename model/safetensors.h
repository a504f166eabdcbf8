// Hugging Face model files: safetensors (8-byte header length, JSON header, raw tensor data;
// memory-mapped, read-only, every offset and shape checked against the file) and config.json.
// Only the dtypes the engines compute with (F32, F16, BF16) can be used; others are listed but
// refused by tensor(). tokenizer.json is read by Tokenizer::from_hf_json.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"
#include "kernels/ggml_type.h"

namespace dsi {

class MappedFile;

struct SafetensorsTensor {
  std::string name;
  std::string dtype;           // as written: "F32", "BF16", "I64", ...
  GgmlType type;               // F32/F16/BF16, or an unsupported id for other dtypes
  std::vector<int64_t> shape;  // as written: row-major, shape.back() is contiguous
  std::vector<int64_t> ne;     // shape reversed: GGUF order, ne[0] contiguous
  int64_t n_elements() const;
  const uint8_t* data = nullptr;  // into the mapping; aligned only as the writer aligned it
  size_t nbytes = 0;
};

class SafetensorsFile {
 public:
  static std::unique_ptr<SafetensorsFile> open(const std::string& path);  // throws ModelError
  // Parses an image in memory that the caller keeps alive (tests, fuzzing).
  static std::unique_ptr<SafetensorsFile> parse(const void* data, size_t size, std::string name);
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  ~SafetensorsFile();

  const std::string& path() const { return path_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::vector<SafetensorsTensor>& tensors() const { return tensors_; }
  const SafetensorsTensor* find(std::string_view name) const;  // nullptr if absent
  // Throws ModelError naming the tensor when absent or of a dtype other than F32/F16/BF16.
  const SafetensorsTensor& tensor(std::string_view name) const;
  std::vector<float> to_float(const SafetensorsTensor& t) const;

 private:
  SafetensorsFile() = default;
  void parse_all();

  std::string path_;
  const uint8_t* base_ = nullptr;
  size_t size_ = 0;
  std::unique_ptr<MappedFile> map_;  // null for parse()
  std::map<std::string, std::string> metadata_;
  std::vector<SafetensorsTensor> tensors_;
  std::map<std::string, size_t, std::less<>> index_;
};

// A model folder: model.safetensors, or the shards named by model.safetensors.index.json.
class SafetensorsModel {
 public:
  static std::unique_ptr<SafetensorsModel> open_dir(const std::string& dir);
  const SafetensorsTensor* find(std::string_view name) const;
  const SafetensorsTensor& tensor(std::string_view name) const;  // throws ModelError
  std::vector<const SafetensorsTensor*> tensors() const;
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }

 private:
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const SafetensorsTensor*, std::less<>> index_;
};

// The fields of a Hugging Face config.json that a Llama-family engine needs.
struct HfConfig {
  std::vector<std::string> architectures;  // e.g. {"LlamaForCausalLM"}
  std::string model_type;                  // "llama", "qwen2", "mistral", ...
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_hidden_layers = 0;
  int num_attention_heads = 0;
  int num_key_value_heads = 0;  // defaults to num_attention_heads
  int head_dim = 0;             // defaults to hidden_size / num_attention_heads
  int vocab_size = 0;
  int max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  std::string rope_scaling_type;  // "" when rope_scaling is absent or null
  bool tie_word_embeddings = false;
  bool is_qwen2 = false;        // Qwen2 architecture
  bool attention_bias = false;  // q/k/v projections have biases (Qwen2, or attention_bias: true)
  int bos_token_id = -1;
  std::vector<int> eos_token_ids;  // eos_token_id may be a number or a list
  std::string torch_dtype;

  // Throws ModelError naming the file and field for a missing or mistyped required field.
  static HfConfig load(const std::string& path);
  static HfConfig parse(const std::string& json_text, const std::string& name);
};

}  // namespace dsi
