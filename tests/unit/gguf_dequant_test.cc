// dsi's reference dequantizer (kernels/cpu/dequant.cc) against the `gguf` package from PyPI
// (its numpy gguf.quants.dequantize, run by tests/reference/gguf_dequant_ref.py through
// /usr/bin/python3): bit for bit, float32, on random blocks of every supported type and, when
// the Qwen2.5-Coder pair has been fetched (DSI_QWEN_CODER_1_5B_GGUF / _0_5B_GGUF), on the
// smallest tensor of each type in the real files. Skips with a message when the package is
// absent (launch/setup.sh installs it). Also the loader on the new types' blocks.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "common/error.h"
#include "engines/llama/llama_loader.h"
#include "kernels/dequant.h"
#include "kernels/half.h"
#include "model/gguf.h"
#include "model/gguf_writer.h"

namespace dsi {
namespace {

namespace fs = std::filesystem;
const std::string kSource = DSI_SOURCE_DIR;
const std::string kTestData = DSI_TESTDATA_DIR;
constexpr const char* kSkip =
    "the gguf package is not installed for /usr/bin/python3 (launch/setup.sh installs it: "
    "/usr/bin/python3 -m pip install --break-system-packages --no-deps gguf==0.19.0); "
    "dequantizers not checked against it";

bool have_gguf() {
  static const bool ok =
      std::system("/usr/bin/python3 -c 'import gguf.quants' > /dev/null 2>&1") == 0;
  return ok;
}

// A fresh folder, removed with its contents at scope exit.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "dsi_dequant_XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

std::vector<uint8_t> read_bytes(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

std::vector<float> read_f32(const fs::path& p) {
  const auto b = read_bytes(p);
  std::vector<float> v(b.size() / 4);
  std::memcpy(v.data(), b.data(), v.size() * 4);
  return v;
}

bool run_ref(const std::string& args) {
  const std::string cmd =
      "/usr/bin/python3 " + kSource + "/tests/reference/gguf_dequant_ref.py " + args;
  const bool ok = std::system(cmd.c_str()) == 0;
  if (!ok) ADD_FAILURE() << "reference failed: " << cmd;
  return ok;
}

// Element-by-element bit comparison; reports the first few differences and their count.
void expect_same_bits(const std::vector<float>& got, const std::vector<float>& want,
                      const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  size_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::memcmp(&got[i], &want[i], 4) == 0) continue;
    if (++bad <= 5) {
      ADD_FAILURE() << what << ": element " << i << " is " << got[i] << " (0x" << std::hex
                    << f32_to_bits(got[i]) << "), gguf says " << want[i] << " (0x"
                    << f32_to_bits(want[i]) << ")" << std::dec;
    }
  }
  EXPECT_EQ(bad, 0u) << what << ": elements that differ from gguf's";
}

TEST(GgufDequant, RandomBlocksBitExact) {
  if (!have_gguf()) GTEST_SKIP() << kSkip;
  TempDir dir;
  if (!run_ref("--random --seed 20250601 --out " + dir.path().string())) return;
  std::ifstream manifest(dir.path() / "manifest.txt");
  std::set<GgmlType> seen;
  std::string line;
  while (std::getline(manifest, line)) {
    std::istringstream in(line);
    uint32_t id = 0;
    std::string name;
    int64_t n = 0;
    ASSERT_TRUE(in >> id >> name >> n) << line;
    const auto type = static_cast<GgmlType>(id);
    ASSERT_TRUE(ggml_type_supported(type)) << name << " is in the reference but not in dsi";
    const auto src = read_bytes(dir.path() / (name + ".bin"));
    ASSERT_EQ(src.size(), ggml_row_size(type, n)) << name;
    // The source one byte off any alignment, as a row inside a tensor may be.
    std::vector<uint8_t> shifted(src.size() + 1);
    std::memcpy(shifted.data() + 1, src.data(), src.size());
    std::vector<float> got(n);
    dequantize_row(type, shifted.data() + 1, got.data(), n);
    expect_same_bits(got, read_f32(dir.path() / (name + ".f32")), name);
    seen.insert(type);
  }
  // Every type dsi reads is covered.
  for (GgmlType t : {GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0, GgmlType::Q4_0,
                     GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q2_K, GgmlType::Q3_K,
                     GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K}) {
    EXPECT_TRUE(seen.count(t)) << ggml_type_name(t) << " was not checked";
  }
}

void check_real_file(const char* env) {
  const char* path = std::getenv(env);
  if (path == nullptr || *path == '\0') {
    GTEST_SKIP() << env << " is not set (launch/fetch_model.sh qwen-coder-pair fetches it)";
  }
  if (!have_gguf()) GTEST_SKIP() << kSkip;
  TempDir dir;
  if (!run_ref(std::string("--gguf ") + path + " --out " + dir.path().string())) return;
  const auto file = GgufFile::open(path);
  std::ifstream manifest(dir.path() / "manifest.txt");
  std::string line;
  int i = 0;
  for (; std::getline(manifest, line); ++i) {
    std::istringstream in(line);
    std::string name;
    uint32_t id = 0;
    int64_t n = 0;
    ASSERT_TRUE(in >> name >> id >> n) << line;
    const GgufTensor& t = file->tensor(name);  // throws (fails) for a type dsi cannot read
    EXPECT_EQ(static_cast<uint32_t>(t.type), id) << name;
    ASSERT_EQ(t.n_elements(), n) << name;
    std::printf("%s: %s, %lld elements\n", name.c_str(), ggml_type_name(t.type),
                static_cast<long long>(n));
    expect_same_bits(file->dequantize(t), read_f32(dir.path() / (std::to_string(i) + ".f32")),
                     name);
  }
  EXPECT_GT(i, 0);
}

TEST(GgufDequant, QwenCoder15BTensorsBitExact) {
  check_real_file("DSI_QWEN_CODER_1_5B_GGUF");
}

TEST(GgufDequant, QwenCoder05BTensorsBitExact) {
  check_real_file("DSI_QWEN_CODER_0_5B_GGUF");
}

// Hand-built blocks with known values, one per new type (independent of the package).
TEST(GgufDequant, KnownBlocks) {
  float y[256];
  {
    BlockQ5_0 b{};
    b.d = fp32_to_fp16(0.5f);
    b.qs[3] = 0xA5;                              // element 3: 5, element 19: 10
    const uint32_t qh = (1u << 3) | (1u << 30);  // element 3 +16; element 30 +16
    std::memcpy(b.qh, &qh, 4);
    dequantize_row(GgmlType::Q5_0, &b, y, 32);
    EXPECT_EQ(y[3], (21 - 16) * 0.5f);
    EXPECT_EQ(y[19], (10 - 16) * 0.5f);
    EXPECT_EQ(y[30], (16 - 16) * 0.5f);
    EXPECT_EQ(y[0], -16 * 0.5f);
  }
  {
    BlockQ5_1 b{};
    b.d = fp32_to_fp16(2.0f);
    b.m = fp32_to_fp16(-1.0f);
    b.qs[15] = 0xF0;  // element 31: 15
    const uint32_t qh = 1u << 31;
    std::memcpy(b.qh, &qh, 4);
    dequantize_row(GgmlType::Q5_1, &b, y, 32);
    EXPECT_EQ(y[31], 31 * 2.0f - 1.0f);
    EXPECT_EQ(y[15], -1.0f);
  }
  {
    BlockQ4_K b{};
    b.d = fp32_to_fp16(0.25f);
    b.dmin = fp32_to_fp16(0.5f);
    b.scales[1] = 3 | (1 << 6);  // sub-block 1 scale 3; high bits of sub-block 5's scale: 1
    b.scales[5] = 7;             // sub-block 1 min 7
    b.scales[9] = 0x42;          // sub-block 5: scale low 2 -> 2 | 1 << 4 = 18, min low 4
    b.qs[0] = 0x9C;              // element 0 (sub-block 0): 12; element 32 (sub-block 1): 9
    b.qs[64 + 5] = 0x0E;         // element 128 + 5 (sub-block 4): 14; element 160 + 5: 0
    b.qs[32 + 7] = 0x60;         // element 64 + 7: 0; element 96 + 7 (sub-block 3): 6
    dequantize_row(GgmlType::Q4_K, &b, y, 256);
    EXPECT_EQ(y[0], 0.0f);                         // sub-block 0: scale 0, min 0
    EXPECT_EQ(y[32], 0.25f * 3 * 9 - 0.5f * 7);    // sub-block 1
    EXPECT_EQ(y[165], 0.25f * 18 * 0 - 0.5f * 4);  // sub-block 5, code 0
    EXPECT_EQ(y[103], 0.0f);                       // sub-block 3: zero scale and min
  }
  {
    BlockQ6_K b{};
    b.d = fp32_to_fp16(0.125f);
    for (int s = 0; s < 16; ++s) b.scales[s] = static_cast<int8_t>(s - 8);
    // Element 128 + 64 + 10 = 202 (sub-block 12): low nibble = high nibble of ql[64 + 10],
    // high bits = bits 4..5 of qh[32 + 10] (202 = 128 + 32 * 2 + 10).
    b.ql[74] = 0x70;
    b.qh[42] = 2 << 4;
    dequantize_row(GgmlType::Q6_K, &b, y, 256);
    EXPECT_EQ(y[202], 0.125f * 4 * ((7 | (2 << 4)) - 32));
    EXPECT_EQ(y[0], 0.125f * -8 * -32);
  }
}

// A GGUF holding the new types opens, and its tensors dequantize as the rows do.
TEST(GgufDequant, FileWithNewTypes) {
  GgufWriter w;
  w.set_string("general.architecture", "llama");
  std::vector<uint8_t> bytes(ggml_row_size(GgmlType::Q6_K, 512));
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i * 37 + 11);
  // Finite scales.
  for (size_t b = 0; b < 2; ++b) {
    const uint16_t d = fp32_to_fp16(0.01f * (b + 1));
    std::memcpy(&bytes[b * sizeof(BlockQ6_K) + 208], &d, 2);
  }
  w.add_tensor_bytes("q6", GgmlType::Q6_K, {256, 2}, bytes);
  std::vector<uint8_t> b5(ggml_row_size(GgmlType::Q5_0, 64), 0x5a);
  w.add_tensor_bytes("q5", GgmlType::Q5_0, {64}, b5);
  const std::vector<float> ones(256, 1.0f);  // no quantizer for the new types
  EXPECT_THROW(quantize_row(GgmlType::Q4_K, ones.data(), 256), std::invalid_argument);
  EXPECT_THROW(quantize_row(GgmlType::Q5_0, ones.data(), 256), std::invalid_argument);
  const auto image = w.to_bytes();
  const auto f = GgufFile::parse(image.data(), image.size(), "new.gguf");
  const GgufTensor& t = f->tensor("q6");
  EXPECT_EQ(t.type, GgmlType::Q6_K);
  EXPECT_EQ(t.nbytes, bytes.size());
  std::vector<float> want(512);
  dequantize_row(GgmlType::Q6_K, bytes.data(), want.data(), 512);
  const auto got = f->dequantize(t);
  ASSERT_EQ(got.size(), 512u);
  EXPECT_EQ(std::memcmp(got.data(), want.data(), 512 * 4), 0);
  EXPECT_EQ(f->dequantize(f->tensor("q5")).size(), 64u);
}

// The llama loader refuses a model with a tensor of a type dsi cannot read, naming the tensor
// and the type, at load time.
TEST(GgufDequant, LoaderNamesUnsupportedTensorType) {
  auto bytes = read_bytes(kTestData + "/tiny-llama-spm-q8_0.gguf");
  ASSERT_FALSE(bytes.empty());
  EXPECT_NO_THROW(load_llama_gguf(GgufFile::parse(bytes.data(), bytes.size(), "ok.gguf")));
  // The tensor info is: name, u32 n_dims, u64 ne[n_dims], u32 type, u64 offset.
  const std::string name = "blk.2.ffn_up.weight";
  const auto it = std::search(bytes.begin(), bytes.end(), name.begin(), name.end());
  ASSERT_NE(it, bytes.end());
  const size_t at = static_cast<size_t>(it - bytes.begin()) + name.size();
  uint32_t n_dims = 0, type = 0;
  std::memcpy(&n_dims, &bytes[at], 4);
  ASSERT_EQ(n_dims, 2u);
  std::memcpy(&type, &bytes[at + 4 + 8 * n_dims], 4);
  ASSERT_EQ(type, 8u);  // q8_0
  const uint32_t iq4_xs = 23;
  std::memcpy(&bytes[at + 4 + 8 * n_dims], &iq4_xs, 4);
  auto f = GgufFile::parse(bytes.data(), bytes.size(), "iq4.gguf");
  try {
    load_llama_gguf(std::move(f));
    ADD_FAILURE() << "loaded a model with an iq4_xs tensor";
  } catch (const ModelError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("tensor 'blk.2.ffn_up.weight' has unsupported type iq4_xs (id 23)"),
              std::string::npos)
        << msg;
  }
}

}  // namespace
}  // namespace dsi
