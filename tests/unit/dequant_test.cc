// Dequantisation and half/bfloat16 conversion: hand-built blocks with known values, and the
// stand-in models quantised by llama.cpp checked against the F16 one (same weights; skipped
// without those reference files, tests/test_data.h).
#include "kernels/dequant.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "../test_data.h"
#include "kernels/half.h"
#include "model/gguf.h"

namespace dsi {
namespace {

TEST(Half, KnownValuesAndRoundTrip) {
  EXPECT_EQ(fp16_to_fp32(0x3c00), 1.0f);
  EXPECT_EQ(fp16_to_fp32(0xc000), -2.0f);
  EXPECT_EQ(fp16_to_fp32(0x7bff), 65504.0f);
  EXPECT_EQ(fp16_to_fp32(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_TRUE(std::isinf(fp16_to_fp32(0x7c00)));
  EXPECT_TRUE(std::isnan(fp16_to_fp32(0x7e00)));
  EXPECT_EQ(fp32_to_fp16(1.0f), 0x3c00);
  EXPECT_EQ(fp32_to_fp16(65520.0f), 0x7c00);          // rounds to inf
  EXPECT_EQ(fp32_to_fp16(std::ldexp(1.0f, -25)), 0);  // tie to even: zero
  EXPECT_EQ(fp32_to_fp16(std::ldexp(1.5f, -25)), 1);
  EXPECT_EQ(fp32_to_fp16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);      // tie to even, down
  EXPECT_EQ(fp32_to_fp16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);  // tie to even, up
  // Every finite half survives a round trip through float.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7c00) == 0x7c00) continue;
    ASSERT_EQ(fp32_to_fp16(fp16_to_fp32(static_cast<uint16_t>(h))), h) << h;
  }
  EXPECT_EQ(bf16_to_fp32(0x3f80), 1.0f);
  EXPECT_EQ(fp32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(fp32_to_bf16(bits_to_f32(0x3f808000)), 0x3f80);  // tie to even
  EXPECT_EQ(fp32_to_bf16(bits_to_f32(0x3f818000)), 0x3f82);
  EXPECT_TRUE(std::isnan(bf16_to_fp32(fp32_to_bf16(NAN))));
}

TEST(Dequant, RowSizes) {
  EXPECT_EQ(ggml_row_size(GgmlType::F32, 10), 40u);
  EXPECT_EQ(ggml_row_size(GgmlType::BF16, 10), 20u);
  EXPECT_EQ(ggml_row_size(GgmlType::Q8_0, 64), 68u);
  EXPECT_EQ(ggml_row_size(GgmlType::Q4_0, 64), 36u);
  EXPECT_EQ(ggml_row_size(GgmlType::Q4_1, 64), 40u);
  EXPECT_THROW(ggml_row_size(GgmlType::Q8_0, 33), std::invalid_argument);
  EXPECT_EQ(ggml_row_size(GgmlType::Q5_0, 64), 44u);
  EXPECT_EQ(ggml_row_size(GgmlType::Q5_1, 64), 48u);
  EXPECT_EQ(ggml_row_size(GgmlType::Q2_K, 512), 168u);
  EXPECT_EQ(ggml_row_size(GgmlType::Q3_K, 512), 220u);
  EXPECT_EQ(ggml_row_size(GgmlType::Q4_K, 512), 288u);
  EXPECT_EQ(ggml_row_size(GgmlType::Q5_K, 512), 352u);
  EXPECT_EQ(ggml_row_size(GgmlType::Q6_K, 512), 420u);
  EXPECT_THROW(ggml_row_size(GgmlType::Q6_K, 128), std::invalid_argument);
  EXPECT_THROW(ggml_row_size(static_cast<GgmlType>(16), 256), std::invalid_argument);
  EXPECT_STREQ(ggml_type_name(GgmlType::Q4_1), "q4_1");
  EXPECT_STREQ(ggml_type_name(GgmlType::Q6_K), "q6_K");
  EXPECT_STREQ(ggml_type_name(static_cast<GgmlType>(16)), "unsupported");
  EXPECT_EQ(ggml_type_describe(GgmlType::Q5_0), "q5_0");
  EXPECT_EQ(ggml_type_describe(static_cast<GgmlType>(16)), "iq2_xxs (id 16)");
  EXPECT_EQ(ggml_type_describe(static_cast<GgmlType>(4)), "q4_2 (id 4)");
  EXPECT_EQ(ggml_type_describe(static_cast<GgmlType>(30)), "bf16");
  EXPECT_EQ(ggml_type_describe(static_cast<GgmlType>(5000)), "unknown type id 5000");
  try {
    ggml_row_size(static_cast<GgmlType>(15), 256);
    ADD_FAILURE() << "q8_K must be refused";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("q8_K (id 15)"), std::string::npos) << e.what();
  }
}

TEST(Dequant, FloatTypes) {
  const uint16_t h[3] = {0x3c00, 0xc000, 0x3800};
  float out[3];
  dequantize_row(GgmlType::F16, h, out, 3);
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], -2.0f);
  EXPECT_EQ(out[2], 0.5f);
  const uint16_t b[2] = {0x3f80, 0xc040};
  dequantize_row(GgmlType::BF16, b, out, 2);
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], -3.0f);
  const float f[2] = {1.5f, -7.0f};
  dequantize_row(GgmlType::F32, f, out, 2);
  EXPECT_EQ(out[1], -7.0f);
}

// An empty tensor (shape [0]) has no data: its pointers may be null (the safetensors fuzzer
// found a memcpy from null under UBSan).
TEST(Dequant, EmptyRow) {
  for (GgmlType t : {GgmlType::F32, GgmlType::F16, GgmlType::BF16}) {
    EXPECT_NO_THROW(dequantize_row(t, nullptr, nullptr, 0));
  }
}

TEST(Dequant, Q8_0Block) {
  BlockQ8_0 blk[2];
  blk[0].d = fp32_to_fp16(0.5f);
  blk[1].d = fp32_to_fp16(-2.0f);
  for (int i = 0; i < 32; ++i) {
    blk[0].qs[i] = static_cast<int8_t>(i - 16);
    blk[1].qs[i] = static_cast<int8_t>(i == 0 ? -128 : 127 - i);
  }
  float out[64];
  dequantize_row(GgmlType::Q8_0, blk, out, 64);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(out[i], 0.5f * (i - 16));
  EXPECT_EQ(out[32], 256.0f);
  EXPECT_EQ(out[33], -2.0f * 126);
}

TEST(Dequant, Q4_0AndQ4_1Blocks) {
  // Byte i holds element i in its low nibble and element i + 16 in its high nibble.
  uint8_t qs[16];
  for (int i = 0; i < 16; ++i) qs[i] = static_cast<uint8_t>(i | ((15 - i) << 4));
  BlockQ4_0 b0;
  b0.d = fp32_to_fp16(0.25f);
  std::memcpy(b0.qs, qs, 16);
  float out[32];
  dequantize_row(GgmlType::Q4_0, &b0, out, 32);
  for (int i = 0; i < 16; ++i) {
    EXPECT_EQ(out[i], (i - 8) * 0.25f);
    EXPECT_EQ(out[i + 16], (15 - i - 8) * 0.25f);
  }
  BlockQ4_1 b1;
  b1.d = fp32_to_fp16(2.0f);
  b1.m = fp32_to_fp16(-1.5f);
  std::memcpy(b1.qs, qs, 16);
  dequantize_row(GgmlType::Q4_1, &b1, out, 32);
  for (int i = 0; i < 16; ++i) {
    EXPECT_EQ(out[i], i * 2.0f - 1.5f);
    EXPECT_EQ(out[i + 16], (15 - i) * 2.0f - 1.5f);
  }
}

TEST(Dequant, UnalignedSource) {
  std::vector<uint8_t> buf(1 + sizeof(BlockQ8_0));
  BlockQ8_0 blk{};
  blk.d = fp32_to_fp16(1.0f);
  blk.qs[5] = 7;
  std::memcpy(buf.data() + 1, &blk, sizeof blk);
  float out[32];
  dequantize_row(GgmlType::Q8_0, buf.data() + 1, out, 32);
  EXPECT_EQ(out[5], 7.0f);
}

double rel_rms(const std::vector<float>& a, const std::vector<float>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    num += (a[i] - ref[i]) * double(a[i] - ref[i]);
    den += ref[i] * double(ref[i]);
  }
  return std::sqrt(num / den);
}

TEST(Dequant, QuantisedModelsMatchF16) {
  for (const char* file :
       {"tiny-llama-spm-f16.gguf", "tiny-llama-spm-q8_0.gguf", "tiny-llama-spm-q4_1.gguf"}) {
    DSI_REQUIRE_TESTDATA(file);
  }
  auto f16 = GgufFile::open(test::testdata_path("tiny-llama-spm-f16.gguf"));
  auto q8 = GgufFile::open(test::testdata_path("tiny-llama-spm-q8_0.gguf"));
  auto q41 = GgufFile::open(test::testdata_path("tiny-llama-spm-q4_1.gguf"));
  for (const char* name : {"token_embd.weight", "blk.0.attn_q.weight", "blk.3.ffn_down.weight",
                           "blk.1.attn_norm.weight"}) {
    const GgufTensor& r = f16->tensor(name);
    const GgufTensor& a = q8->tensor(name);
    const GgufTensor& b = q41->tensor(name);
    ASSERT_EQ(r.ne, a.ne) << name;
    ASSERT_EQ(r.ne, b.ne) << name;
    const auto ref = f16->dequantize(r);
    const double e8 = rel_rms(q8->dequantize(a), ref);
    const double e4 = rel_rms(q41->dequantize(b), ref);
    if (r.type == GgmlType::F32) {
      EXPECT_EQ(e8, 0.0) << name;
      continue;
    }
    EXPECT_EQ(a.type, GgmlType::Q8_0) << name;
    EXPECT_EQ(b.type, GgmlType::Q4_1) << name;
    std::printf("%s: relative RMS error q8_0 %.4f, q4_1 %.4f\n", name, e8, e4);
    EXPECT_LT(e8, 0.01) << name;
    EXPECT_LT(e4, 0.15) << name;
    EXPECT_GT(e4, e8) << name;
  }
}

}  // namespace
}  // namespace dsi
