// Read-only, memory-mapped reader of GGUF files (versions 2 and 3, little-endian): metadata
// key/values and tensor descriptors pointing into the mapping. Every length, count, offset and
// size is checked against the file size while parsing, so any input either opens or throws
// ModelError. It does not interpret the model (see the llama engine) or the tokenizer keys.
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

struct GgufTensor {
  std::string name;
  GgmlType type;            // may be an unsupported id; then data is nullptr and nbytes 0
  std::vector<int64_t> ne;  // dims, ne[0] is the contiguous one (GGUF order)
  int64_t n_elements() const;
  const uint8_t* data = nullptr;  // points into the mapping
  size_t nbytes = 0;
};

class GgufFile {
 public:
  // Maps and parses the file. Throws ModelError naming the file and what is wrong.
  static std::unique_ptr<GgufFile> open(const std::string& path);
  // Parses a GGUF image already in memory, without copying: the caller keeps [data, data+size)
  // alive and unchanged while the GgufFile lives. `name` stands for the path in messages.
  // Used by tests and the fuzzer.
  static std::unique_ptr<GgufFile> parse(const void* data, size_t size, std::string name);

  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;
  ~GgufFile();  // unmaps

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  size_t alignment() const { return alignment_; }
  // Bytes of header, key/values and tensor infos; the data section starts at the next
  // multiple of alignment() (data_offset()).
  size_t header_size() const { return header_size_; }
  size_t data_offset() const { return data_offset_; }

  bool has(std::string_view key) const;
  std::vector<std::string> keys() const;
  std::string get_string(std::string_view key) const;  // throws ModelError if missing/wrong type
  int64_t get_int(std::string_view key) const;         // any integer type
  int64_t get_int(std::string_view key, int64_t fallback) const;
  double get_float(std::string_view key) const;  // f32/f64 (or an integer)
  double get_float(std::string_view key, double fallback) const;
  bool get_bool(std::string_view key, bool fallback) const;
  std::vector<std::string> get_strings(std::string_view key) const;
  std::vector<float> get_floats(std::string_view key) const;  // array of f32/f64
  std::vector<int32_t> get_ints(std::string_view key) const;  // array of integers in int32 range

  const std::vector<GgufTensor>& tensors() const { return tensors_; }
  const GgufTensor* find(std::string_view name) const;  // nullptr if absent
  // Throws ModelError naming the tensor when it is absent, or the tensor and its type when the
  // type is unsupported.
  const GgufTensor& tensor(std::string_view name) const;
  // The whole tensor as floats; throws ModelError naming the tensor for an unsupported type.
  std::vector<float> dequantize(const GgufTensor& t) const;

  // GGUF metadata value types (gguf_type).
  enum ValueType : uint32_t {
    kU8 = 0,
    kI8 = 1,
    kU16 = 2,
    kI16 = 3,
    kU32 = 4,
    kI32 = 5,
    kF32 = 6,
    kBool = 7,
    kString = 8,
    kArray = 9,
    kU64 = 10,
    kI64 = 11,
    kF64 = 12,
  };

 private:
  struct Value {
    uint32_t type = 0;
    uint32_t elem_type = 0;      // arrays only
    uint64_t count = 0;          // arrays: number of elements; strings: byte length
    const uint8_t* p = nullptr;  // scalar bytes, string bytes, or first array element
  };

  GgufFile() = default;
  void parse_all();
  const Value& value(std::string_view key) const;  // throws if missing
  [[noreturn]] void fail_key(std::string_view key, const std::string& what) const;
  [[noreturn]] void fail_type(const GgufTensor& t) const;

  std::string path_;
  const uint8_t* base_ = nullptr;
  size_t size_ = 0;
  std::unique_ptr<MappedFile> map_;  // null for parse()
  uint32_t version_ = 0;
  size_t alignment_ = 32;
  size_t header_size_ = 0;
  size_t data_offset_ = 0;
  std::map<std::string, Value, std::less<>> kv_;
  std::vector<GgufTensor> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
};

}  // namespace dsi
