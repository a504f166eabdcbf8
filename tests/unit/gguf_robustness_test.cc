// Hostile inputs for the GGUF reader: hand-built files with one field wrong, and truncated or
// byte-flipped copies of real files: models written by model/random_model.h, and the reference
// files made by llama.cpp when present (tests/test_data.h). Every case must end in ModelError
// or a valid file whose tensors lie inside the buffer; a crash or a std::bad_alloc fails the
// test.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>

#include "../test_data.h"
#include "model/gguf.h"
#include "model/random_model.h"
#include "model/tokenizer/tokenizer.h"

namespace dsi {
namespace {

std::vector<uint8_t> read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Files written here, named "written:<what>": the tiny random model in Q8_0 (tied head), and
// in Q4_1 with an untied head.
std::vector<uint8_t> written_file(const std::string& name) {
  RandomModelSpec s = test::tiny_spec(GgmlType::Q8_0);
  if (name == "written:tiny-q4_1-untied") {
    s.type = GgmlType::Q4_1;
    s.tied_head = false;
  } else if (name != "written:tiny-q8_0") {
    throw std::invalid_argument("no written file " + name);
  }
  return random_model_writer(s).to_bytes();
}

// Minimal GGUF writer for the tests: fields are appended in file order.
struct Builder {
  std::vector<uint8_t> b;
  template <typename T>
  Builder& put(T v) {
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    b.insert(b.end(), p, p + sizeof v);
    return *this;
  }
  Builder& str(std::string_view s) {
    put<uint64_t>(s.size());
    b.insert(b.end(), s.begin(), s.end());
    return *this;
  }
  Builder& header(uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
    b.insert(b.end(), {'G', 'G', 'U', 'F'});
    return put(version).put(n_tensors).put(n_kv);
  }
  Builder& kv_u32(std::string_view k, uint32_t v) { return str(k).put<uint32_t>(4).put(v); }
  Builder& kv_str(std::string_view k, std::string_view v) { return str(k).put<uint32_t>(8).str(v); }
  Builder& tensor(std::string_view name, std::vector<uint64_t> ne, uint32_t type, uint64_t off) {
    str(name).put<uint32_t>(static_cast<uint32_t>(ne.size()));
    for (uint64_t d : ne) put(d);
    return put(type).put(off);
  }
  Builder& pad(size_t align = 32) {
    while (b.size() % align) b.push_back(0);
    return *this;
  }
  Builder& zeros(size_t n) {
    b.insert(b.end(), n, 0);
    return *this;
  }
};

std::string error_of(const std::vector<uint8_t>& b) {
  try {
    GgufFile::parse(b.data(), b.size(), "t.gguf");
  } catch (const ModelError& e) {
    return e.what();
  }
  return "";
}

#define EXPECT_ERROR_HAS(bytes, text)                                     \
  do {                                                                    \
    const std::string msg_ = error_of(bytes);                             \
    EXPECT_NE(msg_.find(text), std::string::npos) << "message: " << msg_; \
  } while (0)

TEST(GgufRobust, HandBuiltFiles) {
  // A valid one first: two tensors, one of a type this project does not compute with.
  Builder ok;
  ok.header(3, 2, 2).kv_str("general.architecture", "llama").kv_u32("general.alignment", 64);
  ok.tensor("a", {32, 2}, 8, 0).tensor("k", {256}, 16, 128).pad(64).zeros(128 + 66);
  auto f = GgufFile::parse(ok.b.data(), ok.b.size(), "t.gguf");
  EXPECT_EQ(f->alignment(), 64u);
  EXPECT_EQ(f->tensor("a").nbytes, 68u);
  EXPECT_EQ(f->dequantize(f->tensor("a")).size(), 64u);
  ASSERT_NE(f->find("k"), nullptr);  // present, but refused when used
  EXPECT_THROW(f->tensor("k"), ModelError);
  EXPECT_THROW(f->dequantize(*f->find("k")), ModelError);
  try {
    f->tensor("k");
  } catch (const ModelError& e) {
    EXPECT_NE(std::string(e.what()).find("'k' has unsupported type iq2_xxs (id 16)"),
              std::string::npos)
        << e.what();
  }

  Builder v2;
  v2.header(2, 0, 1).kv_u32("x", 7);
  EXPECT_EQ(GgufFile::parse(v2.b.data(), v2.b.size(), "t")->get_int("x"), 7);

  auto with = [](auto fn) {
    Builder b;
    fn(b);
    return b.b;
  };
  EXPECT_ERROR_HAS(with([](Builder& b) { b.header(1, 0, 0); }), "version 1");
  EXPECT_ERROR_HAS(with([](Builder& b) { b.header(4, 0, 0); }), "version 4");
  EXPECT_ERROR_HAS(with([](Builder& b) { b.header(3u << 24, 0, 0); }), "big-endian");
  EXPECT_ERROR_HAS(with([](Builder& b) { b.header(3, 0, 0).b[0] = 'X'; }), "bad magic");
  EXPECT_ERROR_HAS(with([](Builder& b) { b.header(3, 0, ~0ull); }), "key/value count");
  EXPECT_ERROR_HAS(with([](Builder& b) { b.header(3, 1ull << 40, 0); }), "tensor count");
  EXPECT_ERROR_HAS(with([](Builder& b) { b.header(3, 0, 1).put<uint64_t>(~0ull).zeros(16); }),
                   "string length");
  EXPECT_ERROR_HAS(
      with([](Builder& b) { b.header(3, 0, 1).str("k").put<uint32_t>(8).put<uint64_t>(1000); }),
      "key 'k': needs 1000 bytes");
  EXPECT_ERROR_HAS(with([](Builder& b) { b.header(3, 0, 1).str("k").put<uint32_t>(13); }),
                   "invalid value type 13");
  EXPECT_ERROR_HAS(
      with([](Builder& b) {
        b.header(3, 0, 1).str("k").put<uint32_t>(9).put<uint32_t>(8).put<uint64_t>(1ull << 60);
      }),
      "array count");
  EXPECT_ERROR_HAS(
      with([](Builder& b) {
        b.header(3, 0, 1).str("k").put<uint32_t>(9).put<uint32_t>(6).put<uint64_t>(1ull << 62);
      }),
      "runs past end");
  // Arrays of arrays nest only so deep.
  EXPECT_ERROR_HAS(with([](Builder& b) {
                     // Type tag, then (element type = array, count 1) at each level.
                     b.header(3, 0, 1).str("k").put<uint32_t>(9);
                     for (int i = 0; i < 6; ++i) b.put<uint32_t>(9).put<uint64_t>(1);
                     b.zeros(64);
                   }),
                   "nested too deeply");
  EXPECT_ERROR_HAS(with([](Builder& b) { b.header(3, 0, 2).kv_u32("k", 1).kv_u32("k", 2); }),
                   "duplicate key");
  EXPECT_ERROR_HAS(with([](Builder& b) { b.header(3, 0, 1).kv_u32("general.alignment", 24); }),
                   "general.alignment");
  EXPECT_ERROR_HAS(with([](Builder& b) {
                     b.header(3, 1, 0).tensor("t", {1, 1, 1, 1, 1}, 0, 0);
                   }),
                   "5 dimensions");
  EXPECT_ERROR_HAS(with([](Builder& b) {
                     b.header(3, 1, 0).tensor("t", {1ull << 40, 1ull << 40}, 0, 0);
                   }),
                   "absurd");
  EXPECT_ERROR_HAS(with([](Builder& b) { b.header(3, 1, 0).tensor("t", {33}, 8, 0); }),
                   "not a multiple of the q8_0 block");
  EXPECT_ERROR_HAS(with([](Builder& b) { b.header(3, 1, 0).tensor("t", {8}, 0, 16); }),
                   "not a multiple of the alignment");
  EXPECT_ERROR_HAS(
      with([](Builder& b) { b.header(3, 1, 0).tensor("t", {8}, 0, 0).pad().zeros(31); }),
      "tensor 't': data runs past end of file");
  EXPECT_ERROR_HAS(
      with([](Builder& b) { b.header(3, 1, 0).tensor("t", {8}, 0, 32).pad().zeros(40); }),
      "data runs past end of file");
  EXPECT_ERROR_HAS(
      with([](Builder& b) { b.header(3, 2, 0).tensor("t", {8}, 0, 0).tensor("t", {8}, 0, 32); }),
      "duplicate tensor");
  EXPECT_ERROR_HAS(with([](Builder& b) { b.header(3, 1, 0).tensor("t", {8}, 0, 0); }),
                   "data section starts");
}

// Walks everything a caller might read, so that a file that opens is fully usable.
// Building a tokenizer costs tens of milliseconds on these vocabularies, so only `deep` calls
// read the arrays and build one.
void touch_everything(const GgufFile& f, const uint8_t* base, size_t size, bool deep) {
  for (const auto& t : f.tensors()) {
    if (!t.data) continue;
    ASSERT_GE(t.data, base);
    ASSERT_LE(t.data + t.nbytes, base + size);
  }
  if (!deep) return;
  for (const auto& k : f.keys()) {
    try {
      f.get_string(k);
    } catch (const ModelError&) {
    }
    try {
      f.get_int(k);
    } catch (const ModelError&) {
    }
    try {
      f.get_float(k);
    } catch (const ModelError&) {
    }
    try {
      f.get_bool(k, false);
    } catch (const ModelError&) {
    }
    try {
      f.get_strings(k);
    } catch (const ModelError&) {
    }
    try {
      f.get_ints(k);
    } catch (const ModelError&) {
    }
    try {
      f.get_floats(k);
    } catch (const ModelError&) {
    }
  }
  try {
    auto tok = Tokenizer::from_gguf(f);
    tok->decode(tok->encode("Hello world 123 <s>", true, true));
  } catch (const ModelError&) {
  }
}

// Bytes the real files need: the header and, if they have tensors, up to the end of the last.
size_t required_size(const std::vector<uint8_t>& b) {
  auto f = GgufFile::parse(b.data(), b.size(), "full");
  size_t end = f->header_size();
  for (const auto& t : f->tensors()) {
    end = std::max(end, static_cast<size_t>(t.data - b.data()) + t.nbytes);
  }
  return end;
}

TEST(GgufRobust, RealFileWithUnsupportedTensorType) {
  auto b = written_file("written:tiny-q8_0");
  // The tensor info is: name, u32 n_dims, u64 ne[n_dims], u32 type, u64 offset.
  const std::string name = "blk.2.attn_q.weight";
  auto it = std::search(b.begin(), b.end(), name.begin(), name.end());
  ASSERT_NE(it, b.end());
  const size_t at = static_cast<size_t>(it - b.begin()) + name.size();
  uint32_t n_dims;
  std::memcpy(&n_dims, &b[at], 4);
  ASSERT_EQ(n_dims, 2u);
  const size_t type_at = at + 4 + 8 * n_dims;
  uint32_t type;
  std::memcpy(&type, &b[type_at], 4);
  ASSERT_EQ(type, 8u);  // q8_0
  const uint32_t iq2_xxs = 16;
  std::memcpy(&b[type_at], &iq2_xxs, 4);
  auto f = GgufFile::parse(b.data(), b.size(), "flipped.gguf");  // still opens
  EXPECT_NO_THROW(f->tensor("blk.1.attn_q.weight"));
  try {
    f->tensor(name);
    FAIL();
  } catch (const ModelError& e) {
    EXPECT_NE(
        std::string(e.what()).find("'blk.2.attn_q.weight' has unsupported type iq2_xxs (id 16)"),
        std::string::npos)
        << e.what();
  }
  // An impossible type id in the same place is treated alike.
  const uint32_t junk = 0xdeadbeef;
  std::memcpy(&b[type_at], &junk, 4);
  try {
    GgufFile::parse(b.data(), b.size(), "f")->tensor(name);
    FAIL();
  } catch (const ModelError& e) {
    EXPECT_NE(std::string(e.what()).find("unknown type id 3735928559"), std::string::npos)
        << e.what();
  }
}

// A "written:" file, or a reference file (the test skips without it).
class RealFiles : public ::testing::TestWithParam<const char*> {
 protected:
  bool written() const { return std::string(GetParam()).rfind("written:", 0) == 0; }
  std::vector<uint8_t> bytes() const {
    return written() ? written_file(GetParam()) : read_all(test::testdata_path(GetParam()));
  }
};

TEST_P(RealFiles, TruncatedCopiesAlwaysThrow) {
  if (!written()) DSI_REQUIRE_TESTDATA(GetParam());
  const auto full = bytes();
  ASSERT_FALSE(full.empty());
  const size_t need = required_size(full);
  auto f = GgufFile::parse(full.data(), full.size(), "full");
  const size_t header = f->header_size();
  // Every offset in the first KiB, ~300 through the key/values and tensor infos, and some in
  // the tensor data. The parser reads from the start of the buffer, so a prefix is enough.
  std::vector<size_t> cuts;
  for (size_t i = 0; i < std::min<size_t>(1024, need); ++i) cuts.push_back(i);
  for (size_t i = 1024; i < header; i += std::max<size_t>(1, header / 300)) cuts.push_back(i);
  for (size_t i = header; i < need; i += std::max<size_t>(1, (need - header) / 50)) {
    cuts.push_back(i);
  }
  cuts.push_back(need - 1);
  for (size_t cut : cuts) {
    // A fresh copy of exactly `cut` bytes, so that reading past it would be a real overrun
    // under the sanitizers.
    std::vector<uint8_t> b(full.begin(), full.begin() + cut);
    const std::string msg = error_of(b);
    ASSERT_FALSE(msg.empty()) << "truncated at " << cut << " of " << full.size() << " opened";
  }
}

TEST_P(RealFiles, FlippedBytesThrowOrStayInBounds) {
  if (!written()) DSI_REQUIRE_TESTDATA(GetParam());
  const auto full = bytes();
  auto f = GgufFile::parse(full.data(), full.size(), "full");
  // Corrupt only the metadata part (tensor data is opaque). Work on a prefix that still holds
  // all tensor infos plus a little data, so every parse stays cheap.
  const size_t header = f->header_size();
  std::vector<uint8_t> b(full.begin(), full.begin() + std::min(full.size(), header + 4096));
  std::mt19937 rng(7);
  std::vector<size_t> positions;
  for (size_t i = 0; i < std::min<size_t>(header, 256); ++i) positions.push_back(i);
  std::uniform_int_distribution<size_t> any(0, header - 1);
  for (int i = 0; i < 200; ++i) positions.push_back(any(rng));
  const uint8_t values[] = {0x00, 0xff, 0x80, 0x01};
  int opened = 0, refused = 0;
  for (size_t pos : positions) {
    for (uint8_t v : values) {
      const uint8_t saved = b[pos];
      b[pos] = v;
      try {
        auto g = GgufFile::parse(b.data(), b.size(), "flipped");
        touch_everything(*g, b.data(), b.size(), opened % 64 == 0);
        ++opened;
      } catch (const ModelError&) {
        ++refused;
      }
      b[pos] = saved;
    }
  }
  EXPECT_GT(refused, 0);
  EXPECT_GT(opened, 0);
}

INSTANTIATE_TEST_SUITE_P(Gguf, RealFiles,
                         ::testing::Values("ggml-vocab-gpt-2.gguf", "tiny-llama-spm-q4_1.gguf",
                                           "tiny-bpe-untied-f16-q4emb.gguf"));
INSTANTIATE_TEST_SUITE_P(Written, RealFiles,
                         ::testing::Values("written:tiny-q8_0", "written:tiny-q4_1-untied"));

}  // namespace
}  // namespace dsi
