// GGUF parsing. Layout (all little-endian):
//   "GGUF" u32 version, u64 n_tensors, u64 n_kv,
//   n_kv x { string key, u32 type, value }          string = u64 length + bytes
//   n_tensors x { string name, u32 n_dims, u64 ne[n_dims], u32 type, u64 offset }
//   padding to general.alignment, then the data section; offsets are relative to it.
// Every read goes through Cursor, which checks the remaining bytes first, so a count or
// length can never make us read or allocate past the file.
#include "model/gguf.h"

#include <cstring>
#include <limits>
#include <stdexcept>

#include <fmt/format.h>

#include "kernels/dequant.h"
#include "model/mapped_file.h"

namespace dsi {

namespace {

constexpr int kMaxDims = 4;        // ggml's GGML_MAX_DIMS
constexpr int kMaxArrayDepth = 4;  // nested arrays are legal but never deep in practice
constexpr uint64_t kMaxKeyLength = 65535;

const char* value_type_name(uint32_t t) {
  static const char* const names[] = {"u8",   "i8",     "u16",   "i16", "u32", "i32", "f32",
                                      "bool", "string", "array", "u64", "i64", "f64"};
  return t < 13 ? names[t] : "invalid";
}

// Size of a fixed-size value type, 0 for string/array/invalid.
size_t scalar_size(uint32_t t) {
  switch (t) {
    case GgufFile::kU8:
    case GgufFile::kI8:
    case GgufFile::kBool:
      return 1;
    case GgufFile::kU16:
    case GgufFile::kI16:
      return 2;
    case GgufFile::kU32:
    case GgufFile::kI32:
    case GgufFile::kF32:
      return 4;
    case GgufFile::kU64:
    case GgufFile::kI64:
    case GgufFile::kF64:
      return 8;
    default:
      return 0;
  }
}

bool is_int_type(uint32_t t) {
  return t <= GgufFile::kI32 || t == GgufFile::kU64 || t == GgufFile::kI64;
}

template <typename T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Reads an integer scalar of type t at p. Fails (returns false) for u64 above INT64_MAX.
bool load_int(uint32_t t, const uint8_t* p, int64_t* out) {
  switch (t) {
    case GgufFile::kU8:
      *out = load<uint8_t>(p);
      return true;
    case GgufFile::kI8:
      *out = load<int8_t>(p);
      return true;
    case GgufFile::kU16:
      *out = load<uint16_t>(p);
      return true;
    case GgufFile::kI16:
      *out = load<int16_t>(p);
      return true;
    case GgufFile::kU32:
      *out = load<uint32_t>(p);
      return true;
    case GgufFile::kI32:
      *out = load<int32_t>(p);
      return true;
    case GgufFile::kI64:
      *out = load<int64_t>(p);
      return true;
    case GgufFile::kU64: {
      const uint64_t v = load<uint64_t>(p);
      if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
      *out = static_cast<int64_t>(v);
      return true;
    }
    default:
      return false;
  }
}

class Cursor {
 public:
  Cursor(const std::string& file, const uint8_t* base, size_t size)
      : file_(file), base_(base), size_(size) {}

  size_t pos() const { return pos_; }
  size_t left() const { return size_ - pos_; }
  const uint8_t* here() const { return base_ + pos_; }

  [[noreturn]] void fail(const std::string& where, const std::string& what) const {
    throw ModelError(
        fmt::format("{}: {}: {} (offset {}, file size {})", file_, where, what, pos_, size_));
  }

  const uint8_t* take(uint64_t n, const std::string& where) {
    if (n > left()) fail(where, fmt::format("needs {} bytes but the file ends", n));
    const uint8_t* p = here();
    pos_ += n;
    return p;
  }
  uint32_t u32(const std::string& where) { return load<uint32_t>(take(4, where)); }
  uint64_t u64(const std::string& where) { return load<uint64_t>(take(8, where)); }

  std::string_view str(const std::string& where, uint64_t max_len) {
    const uint64_t n = u64(where);
    if (n > max_len) fail(where, fmt::format("string length {} is too large", n));
    const uint8_t* p = take(n, where);
    return {reinterpret_cast<const char*>(p), n};
  }

  // Skips one value of type t (after its type tag), checking every length on the way.
  void skip_value(uint32_t t, const std::string& where, int depth) {
    if (const size_t s = scalar_size(t)) {
      take(s, where);
      return;
    }
    if (t == GgufFile::kString) {
      str(where, left());
      return;
    }
    if (t != GgufFile::kArray) fail(where, fmt::format("invalid value type {}", t));
    if (depth >= kMaxArrayDepth) fail(where, "arrays nested too deeply");
    const uint32_t et = u32(where);
    const uint64_t count = u64(where);
    skip_array(et, count, where, depth + 1);
  }

  void skip_array(uint32_t et, uint64_t count, const std::string& where, int depth) {
    if (const size_t s = scalar_size(et)) {
      if (count > left() / s)
        fail(where,
             fmt::format("array of {} {} runs past end of file", count, value_type_name(et)));
      take(count * s, where);
      return;
    }
    // Strings take at least 8 bytes, nested arrays 12: a count that cannot fit is rejected
    // before walking it.
    const uint64_t min_size = et == GgufFile::kString ? 8 : 12;
    if (et != GgufFile::kString && et != GgufFile::kArray) {
      fail(where, fmt::format("invalid array element type {}", et));
    }
    if (count > left() / min_size) {
      fail(where, fmt::format("array count {} runs past end of file", count));
    }
    for (uint64_t i = 0; i < count; ++i) skip_value(et, where, depth);
  }

 private:
  const std::string& file_;
  const uint8_t* base_;
  size_t size_;
  size_t pos_ = 0;
};

}  // namespace

int64_t GgufTensor::n_elements() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;
  return n;
}

std::unique_ptr<GgufFile> GgufFile::open(const std::string& path) {
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->map_ = MappedFile::open(path, 24);  // 24: magic, version and the two counts
  f->path_ = path;
  f->base_ = f->map_->data();
  f->size_ = f->map_->size();
  f->parse_all();
  return f;
}

std::unique_ptr<GgufFile> GgufFile::parse(const void* data, size_t size, std::string name) {
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->path_ = std::move(name);
  f->base_ = static_cast<const uint8_t*>(data);
  f->size_ = size;
  f->parse_all();
  return f;
}

GgufFile::~GgufFile() = default;

void GgufFile::parse_all() {
  Cursor c(path_, base_, size_);
  const uint8_t* magic = c.take(4, "header");
  if (std::memcmp(magic, "GGUF", 4) != 0) c.fail("header", "bad magic, not a GGUF file");
  version_ = c.u32("header");
  if (version_ == 1) c.fail("header", "GGUF version 1 is not supported (convert it to v3)");
  if (version_ == 0 || version_ > 3) {
    if ((version_ & 0xffff) == 0) c.fail("header", "big-endian GGUF is not supported");
    c.fail("header", fmt::format("GGUF version {} is not supported (2 and 3 are)", version_));
  }
  const uint64_t n_tensors = c.u64("header");
  const uint64_t n_kv = c.u64("header");
  // Minimum encoded sizes: a kv is 8 (key length) + 4 (type) + 1; a tensor info 8+4+4+8.
  if (n_kv > c.left() / 13) c.fail("header", fmt::format("key/value count {} is absurd", n_kv));
  if (n_tensors > c.left() / 24) {
    c.fail("header", fmt::format("tensor count {} is absurd", n_tensors));
  }

  for (uint64_t i = 0; i < n_kv; ++i) {
    const std::string where = fmt::format("key/value #{}", i);
    const std::string key(c.str(where, kMaxKeyLength));
    const std::string kwhere = fmt::format("key '{}'", key);
    Value v;
    v.type = c.u32(kwhere);
    if (v.type == kString) {
      v.count = c.u64(kwhere);
      v.p = c.take(v.count, kwhere);
    } else if (v.type == kArray) {
      v.elem_type = c.u32(kwhere);
      v.count = c.u64(kwhere);
      v.p = c.here();
      c.skip_array(v.elem_type, v.count, kwhere, 1);
    } else if (const size_t s = scalar_size(v.type)) {
      v.p = c.take(s, kwhere);
    } else {
      c.fail(kwhere, fmt::format("invalid value type {}", v.type));
    }
    if (!kv_.emplace(key, v).second) c.fail(kwhere, "duplicate key");
  }

  if (auto it = kv_.find("general.alignment"); it != kv_.end()) {
    int64_t a = 0;
    if (!load_int(it->second.type, it->second.p, &a) || a <= 0 || a > (1 << 30) ||
        (a & (a - 1)) != 0) {
      fail_key("general.alignment", "must be a power of two integer");
    }
    alignment_ = static_cast<size_t>(a);
  }

  struct Pending {
    uint64_t offset;
  };
  std::vector<Pending> offsets;
  tensors_.reserve(n_tensors);
  offsets.reserve(n_tensors);
  for (uint64_t i = 0; i < n_tensors; ++i) {
    const std::string where = fmt::format("tensor info #{}", i);
    GgufTensor t;
    t.name = std::string(c.str(where, kMaxKeyLength));
    const std::string twhere = fmt::format("tensor '{}'", t.name);
    const uint32_t n_dims = c.u32(twhere);
    if (n_dims > kMaxDims)
      c.fail(twhere, fmt::format("{} dimensions (at most {})", n_dims, kMaxDims));
    int64_t n = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t ne = c.u64(twhere);
      if (ne > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          (ne != 0 && static_cast<uint64_t>(n) >
                          static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / ne)) {
        c.fail(twhere, fmt::format("dimension {} = {} is absurd", d, ne));
      }
      n *= static_cast<int64_t>(ne);
      t.ne.push_back(static_cast<int64_t>(ne));
    }
    t.type = static_cast<GgmlType>(c.u32(twhere));
    const uint64_t offset = c.u64(twhere);
    if (offset % alignment_ != 0) {
      c.fail(twhere, fmt::format("data offset {} is not a multiple of the alignment {}", offset,
                                 alignment_));
    }
    if (ggml_type_supported(t.type)) {
      const int64_t ne0 = t.ne.empty() ? 1 : t.ne[0];
      if (ne0 % ggml_block_size(t.type) != 0) {
        c.fail(twhere, fmt::format("ne[0] = {} is not a multiple of the {} block size {}", ne0,
                                   ggml_type_name(t.type), ggml_block_size(t.type)));
      }
      // n / block * type_size cannot overflow once n bytes-per-element is bounded by the file.
      const uint64_t blocks = static_cast<uint64_t>(n / ggml_block_size(t.type));
      if (blocks > size_ / ggml_type_size(t.type)) {
        c.fail(twhere,
               fmt::format("{} elements of {} cannot fit in the file", n, ggml_type_name(t.type)));
      }
      t.nbytes = blocks * ggml_type_size(t.type);
    }
    if (tensor_index_.count(t.name)) c.fail(twhere, "duplicate tensor name");
    tensor_index_.emplace(t.name, tensors_.size());
    tensors_.push_back(std::move(t));
    offsets.push_back({offset});
  }

  // The data section starts at the next multiple of the alignment. A file without tensors
  // may end right after its tensor infos.
  const size_t info_end = c.pos();
  const size_t data_start = (info_end + alignment_ - 1) / alignment_ * alignment_;
  header_size_ = info_end;
  data_offset_ = data_start;
  if (tensors_.empty()) return;
  if (data_start > size_) {
    throw ModelError(fmt::format("{}: data section starts at {}, past end of file ({})", path_,
                                 data_start, size_));
  }
  const size_t data_size = size_ - data_start;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    GgufTensor& t = tensors_[i];
    const uint64_t off = offsets[i].offset;
    if (!ggml_type_supported(t.type)) continue;  // size unknown: refused when used
    if (off > data_size || t.nbytes > data_size - off) {
      throw ModelError(
          fmt::format("{}: tensor '{}': data runs past end of file (offset {}, size {}, file {})",
                      path_, t.name, data_start + off, t.nbytes, size_));
    }
    t.data = base_ + data_start + off;
  }
}

[[noreturn]] void GgufFile::fail_type(const GgufTensor& t) const {
  throw ModelError(fmt::format("{}: tensor '{}' has unsupported type {} (dsi reads {})", path_,
                               t.name, ggml_type_describe(t.type), ggml_supported_types()));
}

[[noreturn]] void GgufFile::fail_key(std::string_view key, const std::string& what) const {
  throw ModelError(fmt::format("{}: key '{}': {}", path_, key, what));
}

bool GgufFile::has(std::string_view key) const {
  return kv_.find(key) != kv_.end();
}

std::vector<std::string> GgufFile::keys() const {
  std::vector<std::string> out;
  for (const auto& [k, v] : kv_) out.push_back(k);
  return out;
}

const GgufFile::Value& GgufFile::value(std::string_view key) const {
  auto it = kv_.find(key);
  if (it == kv_.end()) fail_key(key, "missing");
  return it->second;
}

std::string GgufFile::get_string(std::string_view key) const {
  const Value& v = value(key);
  if (v.type != kString) {
    fail_key(key, fmt::format("has type {}, expected string", value_type_name(v.type)));
  }
  return std::string(reinterpret_cast<const char*>(v.p), v.count);
}

int64_t GgufFile::get_int(std::string_view key) const {
  const Value& v = value(key);
  int64_t out = 0;
  if (!is_int_type(v.type)) {
    fail_key(key, fmt::format("has type {}, expected an integer", value_type_name(v.type)));
  }
  if (!load_int(v.type, v.p, &out)) fail_key(key, "value does not fit in int64");
  return out;
}

int64_t GgufFile::get_int(std::string_view key, int64_t fallback) const {
  return has(key) ? get_int(key) : fallback;
}

double GgufFile::get_float(std::string_view key) const {
  const Value& v = value(key);
  if (v.type == kF32) return load<float>(v.p);
  if (v.type == kF64) return load<double>(v.p);
  if (is_int_type(v.type)) return static_cast<double>(get_int(key));
  fail_key(key, fmt::format("has type {}, expected a number", value_type_name(v.type)));
}

double GgufFile::get_float(std::string_view key, double fallback) const {
  return has(key) ? get_float(key) : fallback;
}

bool GgufFile::get_bool(std::string_view key, bool fallback) const {
  auto it = kv_.find(key);
  if (it == kv_.end()) return fallback;
  if (it->second.type != kBool) {
    fail_key(key, fmt::format("has type {}, expected bool", value_type_name(it->second.type)));
  }
  return *it->second.p != 0;
}

std::vector<std::string> GgufFile::get_strings(std::string_view key) const {
  const Value& v = value(key);
  if (v.type != kArray || v.elem_type != kString) {
    fail_key(key, "is not an array of strings");
  }
  std::vector<std::string> out;
  out.reserve(v.count);
  const uint8_t* p = v.p;  // lengths were validated by the parser
  for (uint64_t i = 0; i < v.count; ++i) {
    const uint64_t n = load<uint64_t>(p);
    out.emplace_back(reinterpret_cast<const char*>(p + 8), n);
    p += 8 + n;
  }
  return out;
}

std::vector<float> GgufFile::get_floats(std::string_view key) const {
  const Value& v = value(key);
  if (v.type != kArray || (v.elem_type != kF32 && v.elem_type != kF64)) {
    fail_key(key, "is not an array of f32/f64");
  }
  std::vector<float> out(v.count);
  for (uint64_t i = 0; i < v.count; ++i) {
    out[i] = v.elem_type == kF32 ? load<float>(v.p + 4 * i)
                                 : static_cast<float>(load<double>(v.p + 8 * i));
  }
  return out;
}

std::vector<int32_t> GgufFile::get_ints(std::string_view key) const {
  const Value& v = value(key);
  if (v.type != kArray || !is_int_type(v.elem_type)) fail_key(key, "is not an array of integers");
  const size_t s = scalar_size(v.elem_type);
  std::vector<int32_t> out(v.count);
  for (uint64_t i = 0; i < v.count; ++i) {
    int64_t x = 0;
    if (!load_int(v.elem_type, v.p + s * i, &x) || x < std::numeric_limits<int32_t>::min() ||
        x > std::numeric_limits<int32_t>::max()) {
      fail_key(key, fmt::format("element {} does not fit in int32", i));
    }
    out[i] = static_cast<int32_t>(x);
  }
  return out;
}

const GgufTensor* GgufFile::find(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const GgufTensor& GgufFile::tensor(std::string_view name) const {
  const GgufTensor* t = find(name);
  if (!t) throw ModelError(fmt::format("{}: tensor '{}' is missing", path_, name));
  if (!ggml_type_supported(t->type)) fail_type(*t);
  return *t;
}

std::vector<float> GgufFile::dequantize(const GgufTensor& t) const {
  if (!ggml_type_supported(t.type) || t.data == nullptr) fail_type(t);
  std::vector<float> out(static_cast<size_t>(t.n_elements()));
  const int64_t ne0 = t.ne.empty() ? 1 : t.ne[0];
  if (ne0 == 0) return out;
  const size_t row_bytes = ggml_row_size(t.type, ne0);
  const int64_t rows = t.n_elements() / ne0;
  for (int64_t r = 0; r < rows; ++r) {
    dequantize_row(t.type, t.data + r * row_bytes, out.data() + r * ne0, ne0);
  }
  return out;
}

}  // namespace dsi
