// GGUF writer and quantizers (model/gguf_writer.h).
#include "model/gguf_writer.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <stdexcept>

#include "common/error.h"
#include "kernels/half.h"
#include "model/gguf.h"

namespace dsi {
namespace {

void put_bytes(std::vector<uint8_t>& b, const void* p, size_t n) {
  const auto* c = static_cast<const uint8_t*>(p);
  b.insert(b.end(), c, c + n);
}
template <typename T>
void put(std::vector<uint8_t>& b, T v) {
  put_bytes(b, &v, sizeof v);
}
void put_str(std::vector<uint8_t>& b, const std::string& s) {
  put<uint64_t>(b, s.size());
  put_bytes(b, s.data(), s.size());
}

// Half-rounded scale and its float value.
uint16_t half_of(float v, float* rounded) {
  const uint16_t h = fp32_to_fp16(v);
  *rounded = fp16_to_fp32(h);
  return h;
}

void quantize_q8_0(const float* x, BlockQ8_0* b) {
  float amax = 0;
  for (int i = 0; i < 32; ++i) amax = std::max(amax, std::abs(x[i]));
  float d;
  b->d = half_of(amax / 127.0f, &d);
  const float id = d > 0 ? 1.0f / d : 0.0f;
  for (int i = 0; i < 32; ++i) {
    b->qs[i] = static_cast<int8_t>(std::clamp(std::lround(x[i] * id), -127L, 127L));
  }
}

void quantize_q4_0(const float* x, BlockQ4_0* b) {
  // The signed extreme maps to code 0 (-8), so the full range [-8, 7] is used.
  float ext = 0;
  for (int i = 0; i < 32; ++i) {
    if (std::abs(x[i]) > std::abs(ext)) ext = x[i];
  }
  float d;
  b->d = half_of(ext / -8.0f, &d);
  const float id = d != 0 ? 1.0f / d : 0.0f;
  auto code = [&](float v) {
    return static_cast<uint8_t>(std::clamp(std::lround(v * id) + 8, 0L, 15L));
  };
  for (int i = 0; i < 16; ++i) b->qs[i] = code(x[i]) | static_cast<uint8_t>(code(x[i + 16]) << 4);
}

void quantize_q4_1(const float* x, BlockQ4_1* b) {
  float lo = x[0], hi = x[0];
  for (int i = 1; i < 32; ++i) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
  }
  float d, m;
  b->d = half_of((hi - lo) / 15.0f, &d);
  b->m = half_of(lo, &m);
  const float id = d > 0 ? 1.0f / d : 0.0f;
  auto code = [&](float v) {
    return static_cast<uint8_t>(std::clamp(std::lround((v - m) * id), 0L, 15L));
  };
  for (int i = 0; i < 16; ++i) b->qs[i] = code(x[i]) | static_cast<uint8_t>(code(x[i + 16]) << 4);
}

uint64_t padded(uint64_t n, uint64_t a) {
  return (n + a - 1) / a * a;
}

}  // namespace

std::vector<uint8_t> quantize_row(GgmlType type, const float* x, int64_t n) {
  std::vector<uint8_t> out(ggml_row_size(type, n));  // validates type and n
  switch (type) {
    case GgmlType::F32:
      std::memcpy(out.data(), x, n * sizeof(float));
      break;
    case GgmlType::F16:
    case GgmlType::BF16:
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = type == GgmlType::F16 ? fp32_to_fp16(x[i]) : fp32_to_bf16(x[i]);
        std::memcpy(&out[2 * i], &h, 2);
      }
      break;
    case GgmlType::Q8_0:
      for (int64_t i = 0; i < n / 32; ++i) {
        BlockQ8_0 b;
        quantize_q8_0(x + 32 * i, &b);
        std::memcpy(&out[i * sizeof b], &b, sizeof b);
      }
      break;
    case GgmlType::Q4_0:
      for (int64_t i = 0; i < n / 32; ++i) {
        BlockQ4_0 b;
        quantize_q4_0(x + 32 * i, &b);
        std::memcpy(&out[i * sizeof b], &b, sizeof b);
      }
      break;
    case GgmlType::Q4_1:
      for (int64_t i = 0; i < n / 32; ++i) {
        BlockQ4_1 b;
        quantize_q4_1(x + 32 * i, &b);
        std::memcpy(&out[i * sizeof b], &b, sizeof b);
      }
      break;
    default:
      throw std::invalid_argument(std::string("quantize_row: cannot quantize to ") +
                                  ggml_type_name(type) +
                                  " (f32, f16, bf16, q8_0, q4_0, q4_1 can be written; add other "
                                  "types' blocks with add_tensor_bytes)");
  }
  return out;
}

GgufWriter::GgufWriter(uint32_t alignment) : alignment_(alignment) {
  if (alignment == 0 || (alignment & (alignment - 1)) != 0) {
    throw std::invalid_argument("GgufWriter: alignment must be a power of two");
  }
  if (alignment != 32) set_u32("general.alignment", alignment);
}

void GgufWriter::add_kv(const std::string& key, uint32_t type, const std::vector<uint8_t>& p) {
  put_str(kv_, key);
  put<uint32_t>(kv_, type);
  kv_.insert(kv_.end(), p.begin(), p.end());
  ++n_kv_;
}

#define DSI_SCALAR(fn, T, code)                      \
  void GgufWriter::fn(const std::string& key, T v) { \
    std::vector<uint8_t> p;                          \
    put<T>(p, v);                                    \
    add_kv(key, GgufFile::code, p);                  \
  }
DSI_SCALAR(set_u32, uint32_t, kU32)
DSI_SCALAR(set_i32, int32_t, kI32)
DSI_SCALAR(set_u64, uint64_t, kU64)
DSI_SCALAR(set_f32, float, kF32)
#undef DSI_SCALAR

void GgufWriter::set_bool(const std::string& key, bool v) {
  add_kv(key, GgufFile::kBool, {static_cast<uint8_t>(v ? 1 : 0)});
}

void GgufWriter::set_string(const std::string& key, const std::string& v) {
  std::vector<uint8_t> p;
  put_str(p, v);
  add_kv(key, GgufFile::kString, p);
}

void GgufWriter::set_strings(const std::string& key, const std::vector<std::string>& v) {
  std::vector<uint8_t> p;
  put<uint32_t>(p, GgufFile::kString);
  put<uint64_t>(p, v.size());
  for (const auto& s : v) put_str(p, s);
  add_kv(key, GgufFile::kArray, p);
}

void GgufWriter::set_f32s(const std::string& key, const std::vector<float>& v) {
  std::vector<uint8_t> p;
  put<uint32_t>(p, GgufFile::kF32);
  put<uint64_t>(p, v.size());
  put_bytes(p, v.data(), v.size() * sizeof(float));
  add_kv(key, GgufFile::kArray, p);
}

void GgufWriter::set_i32s(const std::string& key, const std::vector<int32_t>& v) {
  std::vector<uint8_t> p;
  put<uint32_t>(p, GgufFile::kI32);
  put<uint64_t>(p, v.size());
  put_bytes(p, v.data(), v.size() * sizeof(int32_t));
  add_kv(key, GgufFile::kArray, p);
}

void GgufWriter::add_tensor(const std::string& name, GgmlType type, std::vector<int64_t> ne,
                            Fill fill) {
  if (ne.empty() || ne.size() > 4) {
    throw std::invalid_argument("GgufWriter: tensor '" + name + "' needs 1 to 4 dims");
  }
  int64_t rows = 1;
  for (size_t i = 1; i < ne.size(); ++i) rows *= ne[i];
  Tensor t{name, type, std::move(ne), std::move(fill), {}, 0};
  t.nbytes = ggml_row_size(type, t.ne[0]) * static_cast<uint64_t>(rows);  // validates
  tensors_.push_back(std::move(t));
}

void GgufWriter::add_tensor_bytes(const std::string& name, GgmlType type, std::vector<int64_t> ne,
                                  std::vector<uint8_t> bytes) {
  add_tensor(name, type, std::move(ne), nullptr);
  if (bytes.size() != tensors_.back().nbytes) {
    const auto want = tensors_.back().nbytes;
    tensors_.pop_back();
    throw std::invalid_argument("GgufWriter: tensor '" + name + "' has " +
                                std::to_string(bytes.size()) + " bytes, expected " +
                                std::to_string(want));
  }
  tensors_.back().bytes = std::move(bytes);
}

template <typename Sink>
void GgufWriter::emit(Sink& sink) const {
  std::vector<uint8_t> head;
  put_bytes(head, "GGUF", 4);
  put<uint32_t>(head, 3);
  put<uint64_t>(head, tensors_.size());
  put<uint64_t>(head, n_kv_);
  head.insert(head.end(), kv_.begin(), kv_.end());
  uint64_t offset = 0;
  for (const Tensor& t : tensors_) {
    put_str(head, t.name);
    put<uint32_t>(head, static_cast<uint32_t>(t.ne.size()));
    for (int64_t d : t.ne) put<uint64_t>(head, static_cast<uint64_t>(d));
    put<uint32_t>(head, static_cast<uint32_t>(t.type));
    put<uint64_t>(head, offset);
    offset = padded(offset + t.nbytes, alignment_);
  }
  head.resize(padded(head.size(), alignment_), 0);
  sink(head.data(), head.size());

  const std::vector<uint8_t> zeros(alignment_, 0);
  std::vector<float> buf;
  for (const Tensor& t : tensors_) {
    if (!t.fill) {
      sink(t.bytes.data(), t.bytes.size());
    } else {
      // Chunks of whole rows, about 1M floats each.
      const int64_t row = t.ne[0];
      int64_t rows = 1;
      for (size_t i = 1; i < t.ne.size(); ++i) rows *= t.ne[i];
      const int64_t chunk_rows = std::max<int64_t>(1, (int64_t{1} << 20) / row);
      for (int64_t r = 0; r < rows; r += chunk_rows) {
        const int64_t n = std::min(chunk_rows, rows - r) * row;
        buf.resize(n);
        t.fill(buf.data(), r * row, n);
        const auto q = quantize_row(t.type, buf.data(), n);
        sink(q.data(), q.size());
      }
    }
    const uint64_t pad = padded(t.nbytes, alignment_) - t.nbytes;
    if (pad > 0) sink(zeros.data(), pad);
  }
}

void GgufWriter::write(const std::string& path) const {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) throw ModelError(path + ": cannot open for writing");
  bool ok = true;
  auto sink = [&](const void* p, size_t n) {
    if (ok && n > 0 && std::fwrite(p, 1, n, f) != n) ok = false;
  };
  try {
    emit(sink);
  } catch (...) {
    std::fclose(f);
    std::remove(path.c_str());
    throw;
  }
  if (std::fclose(f) != 0) ok = false;
  if (!ok) {
    std::remove(path.c_str());
    throw ModelError(path + ": write failed (disk full?)");
  }
}

std::vector<uint8_t> GgufWriter::to_bytes() const {
  std::vector<uint8_t> out;
  auto sink = [&](const void* p, size_t n) { put_bytes(out, p, n); };
  emit(sink);
  return out;
}

}  // namespace dsi
