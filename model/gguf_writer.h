// Writer of GGUF v3 files (the format read by model/gguf.h): metadata key/values,
// tensor infos and the aligned data section, plus the quantizers used to store float data as
// F32/F16/BF16/Q8_0/Q4_0/Q4_1. Tensor data is produced while the file is written (a fill
// callback per tensor), so multi-GB models are written in bounded memory.
//
// File grammar (little-endian): "GGUF" u32 version=3, u64 n_tensors, u64 n_kv,
//   n_kv x (string key, u32 type, value), n_tensors x (string name, u32 n_dims,
//   n_dims x u64 ne, u32 ggml_type, u64 offset), zero padding to `alignment`, then each
//   tensor's bytes at its offset (each offset a multiple of alignment). string = u64 length
//   + bytes; array = u32 element type, u64 count, elements.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "kernels/ggml_type.h"

namespace dsi {

// Quantizes n floats (a multiple of the block size) into the GGUF layout of `type`. Each block
// of 32 is scaled by its own extreme values; the scale is rounded to half first and the codes
// are chosen against the rounded scale, so the error per element is at most about half a
// quantization step: Q8_0 amax/254, Q4_1 (max-min)/30 (plus half rounding). Q4_0 maps the
// signed extreme to code -8, so values on the other side may lose a whole step: amax/8.
// Throws std::invalid_argument for a type other than F32, F16, BF16, Q8_0, Q4_0, Q4_1 or a bad n.
std::vector<uint8_t> quantize_row(GgmlType type, const float* x, int64_t n);

class GgufWriter {
 public:
  // Produces elements [first, first + n) of the tensor (flat index; n a multiple of ne[0]).
  // Called in increasing order during each write, and again by a later write, so it must be
  // a function of the index range (the random models are: counter-based generator).
  using Fill = std::function<void(float* out, int64_t first, int64_t n)>;

  explicit GgufWriter(uint32_t alignment = 32);

  void set_u32(const std::string& key, uint32_t v);
  void set_i32(const std::string& key, int32_t v);
  void set_u64(const std::string& key, uint64_t v);
  void set_f32(const std::string& key, float v);
  void set_bool(const std::string& key, bool v);
  void set_string(const std::string& key, const std::string& v);
  void set_strings(const std::string& key, const std::vector<std::string>& v);
  void set_f32s(const std::string& key, const std::vector<float>& v);
  void set_i32s(const std::string& key, const std::vector<int32_t>& v);

  // ne in GGUF order (ne[0] contiguous). The float data from `fill` is quantized to `type`.
  void add_tensor(const std::string& name, GgmlType type, std::vector<int64_t> ne, Fill fill);
  // Raw bytes already in `type`'s layout (ggml_row_size(type, ne[0]) * rows bytes).
  void add_tensor_bytes(const std::string& name, GgmlType type, std::vector<int64_t> ne,
                        std::vector<uint8_t> bytes);

  // Writes the file (throws ModelError naming the path on an I/O error; a partial
  // file is removed). Fill callbacks run here, in the order tensors were added.
  void write(const std::string& path) const;
  // The whole file image in memory (for tests).
  std::vector<uint8_t> to_bytes() const;

  size_t n_tensors() const { return tensors_.size(); }

 private:
  struct Tensor {
    std::string name;
    GgmlType type;
    std::vector<int64_t> ne;
    Fill fill;
    std::vector<uint8_t> bytes;  // used when fill is empty
    uint64_t nbytes = 0;
  };
  void add_kv(const std::string& key, uint32_t type, const std::vector<uint8_t>& payload);
  template <typename Sink>
  void emit(Sink& sink) const;

  uint32_t alignment_;
  uint64_t n_kv_ = 0;
  std::vector<uint8_t> kv_;  // serialised key/values
  std::vector<Tensor> tensors_;
};

}  // namespace dsi
