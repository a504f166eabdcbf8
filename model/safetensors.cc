// safetensors and config.json parsing. A safetensors file is
//   u64 n (little-endian) | n bytes of JSON | data
// where the JSON maps each tensor name to {dtype, shape, data_offsets: [begin, end]} (offsets
// relative to the data part) plus an optional "__metadata__" string map.
#include "model/safetensors.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "kernels/dequant.h"
#include "model/mapped_file.h"

namespace dsi {

namespace {

using nlohmann::json;

// safetensors' own limit on the header, which keeps a hostile length from costing memory.
constexpr uint64_t kMaxHeader = 100u << 20;
constexpr size_t kMaxDims = 8;

// Element size of every dtype the format defines; 0 for an unknown name.
size_t dtype_size(std::string_view d) {
  if (d == "F64" || d == "I64" || d == "U64") return 8;
  if (d == "F32" || d == "I32" || d == "U32") return 4;
  if (d == "F16" || d == "BF16" || d == "I16" || d == "U16") return 2;
  if (d == "I8" || d == "U8" || d == "BOOL" || d == "F8_E4M3" || d == "F8_E5M2") return 1;
  return 0;
}

GgmlType dtype_type(std::string_view d) {
  if (d == "F32") return GgmlType::F32;
  if (d == "F16") return GgmlType::F16;
  if (d == "BF16") return GgmlType::BF16;
  return static_cast<GgmlType>(0xffffffffu);  // never a ggml type: unsupported
}

}  // namespace

int64_t SafetensorsTensor::n_elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::unique_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  auto map = MappedFile::open(path, 8);
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  f->base_ = map->data();
  f->size_ = map->size();
  f->map_ = std::move(map);
  f->parse_all();
  return f;
}

std::unique_ptr<SafetensorsFile> SafetensorsFile::parse(const void* data, size_t size,
                                                        std::string name) {
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = std::move(name);
  f->base_ = static_cast<const uint8_t*>(data);
  f->size_ = size;
  f->parse_all();
  return f;
}

SafetensorsFile::~SafetensorsFile() = default;

void SafetensorsFile::parse_all() {
  auto fail = [&](const std::string& what) -> void {
    throw ModelError(fmt::format("{}: {}", path_, what));
  };
  if (size_ < 8) fail(fmt::format("file of {} bytes has no header length", size_));
  uint64_t n;
  std::memcpy(&n, base_, 8);
  if (n > kMaxHeader || n > size_ - 8) {
    fail(fmt::format("header length {} runs past end of file ({} bytes)", n, size_));
  }
  json header;
  try {
    header = json::parse(base_ + 8, base_ + 8 + n);
  } catch (const json::exception& e) {
    fail(fmt::format("header is not valid JSON: {}", e.what()));
  }
  if (!header.is_object()) fail("header is not a JSON object");
  const size_t data_start = 8 + n;
  const uint64_t data_size = size_ - data_start;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) fail("__metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (m.value().is_string()) metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    auto tfail = [&](const std::string& what) { fail(fmt::format("tensor '{}': {}", name, what)); };
    if (!v.is_object()) tfail("entry is not an object");
    SafetensorsTensor t;
    t.name = name;
    auto dt = v.find("dtype");
    if (dt == v.end() || !dt->is_string()) tfail("dtype missing or not a string");
    t.dtype = dt->get<std::string>();
    const size_t esize = dtype_size(t.dtype);
    if (esize == 0) tfail(fmt::format("unknown dtype '{}'", t.dtype));
    t.type = dtype_type(t.dtype);
    auto sh = v.find("shape");
    if (sh == v.end() || !sh->is_array() || sh->size() > kMaxDims) {
      tfail("shape missing, not an array, or more than 8 dims");
    }
    uint64_t count = 1;
    for (const json& d : *sh) {
      if (!d.is_number_unsigned()) tfail("shape has a negative or non-integer dim");
      const uint64_t x = d.get<uint64_t>();
      if (x > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          (x != 0 && count > data_size / x)) {
        tfail(fmt::format("shape {} does not fit in the data ({} bytes)", sh->dump(), data_size));
      }
      count *= x;
      t.shape.push_back(static_cast<int64_t>(x));
    }
    t.ne.assign(t.shape.rbegin(), t.shape.rend());
    auto off = v.find("data_offsets");
    if (off == v.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
        !(*off)[1].is_number_unsigned()) {
      tfail("data_offsets missing or not two unsigned integers");
    }
    const uint64_t begin = (*off)[0].get<uint64_t>(), end = (*off)[1].get<uint64_t>();
    if (begin > end || end > data_size) {
      tfail(fmt::format("data runs past end of file (offsets [{}, {}], data size {})", begin, end,
                        data_size));
    }
    if (end - begin != count * esize) {
      tfail(fmt::format("{} bytes of data for shape {} of {} ({} expected)", end - begin,
                        sh->dump(), t.dtype, count * esize));
    }
    t.data = base_ + data_start + begin;
    t.nbytes = end - begin;
    index_.emplace(name, tensors_.size());
    tensors_.push_back(std::move(t));
  }
}

const SafetensorsTensor* SafetensorsFile::find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const SafetensorsTensor& SafetensorsFile::tensor(std::string_view name) const {
  const SafetensorsTensor* t = find(name);
  if (!t) throw ModelError(fmt::format("{}: tensor '{}' is missing", path_, name));
  if (!ggml_type_supported(t->type)) {
    throw ModelError(fmt::format("{}: tensor '{}' has dtype {} (F32, F16, BF16 are supported)",
                                 path_, name, t->dtype));
  }
  return *t;
}

std::vector<float> SafetensorsFile::to_float(const SafetensorsTensor& t) const {
  if (!ggml_type_supported(t.type)) tensor(t.name);  // throws the message above
  std::vector<float> out(static_cast<size_t>(t.n_elements()));
  dequantize_row(t.type, t.data, out.data(), t.n_elements());
  return out;
}

std::unique_ptr<SafetensorsModel> SafetensorsModel::open_dir(const std::string& dir) {
  namespace fs = std::filesystem;
  auto m = std::make_unique<SafetensorsModel>();
  m->dir_ = dir;
  std::vector<std::string> shards;
  const fs::path index = fs::path(dir) / "model.safetensors.index.json";
  if (fs::exists(index)) {
    json j;
    try {
      j = json::parse(read_text_file(index.string()));
    } catch (const json::exception& e) {
      throw ModelError(fmt::format("{}: not valid JSON: {}", index.string(), e.what()));
    }
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object()) {
      throw ModelError(fmt::format("{}: no weight_map object", index.string()));
    }
    std::set<std::string> names;
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      if (!it.value().is_string()) {
        throw ModelError(
            fmt::format("{}: weight_map entry '{}' is not a file name", index.string(), it.key()));
      }
      const std::string file = it.value().get<std::string>();
      if (file.find('/') != std::string::npos || file == "..") {
        throw ModelError(
            fmt::format("{}: shard name '{}' is not a plain file name", index.string(), file));
      }
      names.insert(file);
    }
    shards.assign(names.begin(), names.end());
  } else {
    shards.push_back("model.safetensors");
  }
  for (const std::string& s : shards) {
    m->files_.push_back(SafetensorsFile::open((fs::path(dir) / s).string()));
    for (const auto& t : m->files_.back()->tensors()) {
      if (!m->index_.emplace(t.name, &t).second) {
        throw ModelError(fmt::format("{}: tensor '{}' appears in two shards", dir, t.name));
      }
    }
  }
  return m;
}

const SafetensorsTensor* SafetensorsModel::find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second;
}

const SafetensorsTensor& SafetensorsModel::tensor(std::string_view name) const {
  for (const auto& f : files_) {
    if (f->find(name)) return f->tensor(name);  // checks the dtype
  }
  throw ModelError(fmt::format("{}: tensor '{}' is missing", dir_, name));
}

std::vector<const SafetensorsTensor*> SafetensorsModel::tensors() const {
  std::vector<const SafetensorsTensor*> out;
  for (const auto& [name, t] : index_) out.push_back(t);
  return out;
}

HfConfig HfConfig::load(const std::string& path) {
  return parse(read_text_file(path), path);
}

HfConfig HfConfig::parse(const std::string& text, const std::string& name) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw ModelError(fmt::format("{}: not valid JSON: {}", name, e.what()));
  }
  if (!j.is_object()) throw ModelError(fmt::format("{}: not a JSON object", name));
  auto fail = [&](const char* key, const char* what) {
    throw ModelError(fmt::format("{}: field '{}' {}", name, key, what));
  };
  auto get_int = [&](const char* key, int fallback, bool required) -> int {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) {
      if (required) fail(key, "is missing");
      return fallback;
    }
    if (!it->is_number_integer()) fail(key, "is not an integer");
    const int64_t v = it->get<int64_t>();
    if (v < 0 || v > std::numeric_limits<int>::max()) fail(key, "is out of range");
    return static_cast<int>(v);
  };
  auto get_double = [&](const char* key, double fallback) -> double {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return fallback;
    if (!it->is_number()) fail(key, "is not a number");
    return it->get<double>();
  };
  auto get_bool = [&](const char* key, bool fallback) -> bool {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return fallback;
    if (!it->is_boolean()) fail(key, "is not a boolean");
    return it->get<bool>();
  };
  auto get_string = [&](const char* key) -> std::string {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return "";
    if (!it->is_string()) fail(key, "is not a string");
    return it->get<std::string>();
  };

  HfConfig c;
  if (auto it = j.find("architectures"); it != j.end() && it->is_array()) {
    for (const json& a : *it) {
      if (a.is_string()) c.architectures.push_back(a.get<std::string>());
    }
  }
  c.model_type = get_string("model_type");
  c.torch_dtype = get_string("torch_dtype");
  c.hidden_size = get_int("hidden_size", 0, true);
  c.intermediate_size = get_int("intermediate_size", 0, true);
  c.num_hidden_layers = get_int("num_hidden_layers", 0, true);
  c.num_attention_heads = get_int("num_attention_heads", 0, true);
  c.num_key_value_heads = get_int("num_key_value_heads", c.num_attention_heads, false);
  c.vocab_size = get_int("vocab_size", 0, true);
  c.max_position_embeddings = get_int("max_position_embeddings", 2048, false);
  if (c.num_attention_heads == 0 || c.num_key_value_heads == 0 ||
      c.num_attention_heads % c.num_key_value_heads != 0) {
    fail("num_key_value_heads", "must be non-zero and divide num_attention_heads");
  }
  c.head_dim = get_int("head_dim", c.hidden_size / c.num_attention_heads, false);
  c.rms_norm_eps = get_double("rms_norm_eps", 1e-6);
  c.rope_theta = get_double("rope_theta", 10000.0);
  if (auto it = j.find("rope_scaling"); it != j.end() && !it->is_null()) {
    if (!it->is_object()) fail("rope_scaling", "is not an object");
    for (const char* k : {"rope_type", "type"}) {
      if (it->contains(k) && (*it)[k].is_string()) {
        c.rope_scaling_type = (*it)[k].get<std::string>();
        break;
      }
    }
    if (c.rope_scaling_type.empty()) c.rope_scaling_type = "unknown";
  }
  c.tie_word_embeddings = get_bool("tie_word_embeddings", false);
  for (const auto& a : c.architectures) c.is_qwen2 = c.is_qwen2 || a.rfind("Qwen2", 0) == 0;
  c.is_qwen2 = c.is_qwen2 || c.model_type == "qwen2";
  c.attention_bias = get_bool("attention_bias", c.is_qwen2);
  c.bos_token_id = get_int("bos_token_id", -1, false);
  if (auto it = j.find("eos_token_id"); it != j.end() && !it->is_null()) {
    if (it->is_number_integer()) {
      c.eos_token_ids.push_back(it->get<int>());
    } else if (it->is_array()) {
      for (const json& e : *it) {
        if (!e.is_number_integer()) fail("eos_token_id", "has a non-integer element");
        c.eos_token_ids.push_back(e.get<int>());
      }
    } else {
      fail("eos_token_id", "is neither an integer nor a list");
    }
  }
  return c;
}

}  // namespace dsi
