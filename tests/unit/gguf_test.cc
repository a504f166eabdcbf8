// GGUF reader: the reference files made by llama.cpp open with the expected keys and tensors
// (skipped without them, tests/test_data.h), and a missing file, a folder or a file that is not
// GGUF end in ModelError. Corrupted and truncated files: gguf_robustness_test.cc.
#include "model/gguf.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "../test_data.h"

namespace dsi {
namespace {

TEST(Gguf, VocabFileKeys) {
  DSI_REQUIRE_TESTDATA("ggml-vocab-llama-spm.gguf");
  auto f = GgufFile::open(test::testdata_path("ggml-vocab-llama-spm.gguf"));
  EXPECT_EQ(f->version(), 3u);
  EXPECT_TRUE(f->tensors().empty());
  EXPECT_EQ(f->get_string("tokenizer.ggml.model"), "llama");
  EXPECT_EQ(f->get_string("general.architecture"), "llama");
  EXPECT_EQ(f->get_strings("tokenizer.ggml.tokens").size(), 32000u);
  EXPECT_EQ(f->get_floats("tokenizer.ggml.scores").size(), 32000u);
  EXPECT_EQ(f->get_ints("tokenizer.ggml.token_type").size(), 32000u);
  EXPECT_EQ(f->get_int("tokenizer.ggml.bos_token_id"), 1);
  EXPECT_TRUE(f->get_bool("tokenizer.ggml.add_bos_token", false));
  EXPECT_FALSE(f->get_bool("tokenizer.ggml.add_eos_token", true));
  EXPECT_EQ(f->get_int("no.such.key", 42), 42);
  EXPECT_DOUBLE_EQ(f->get_float("no.such.key", 0.5), 0.5);
  EXPECT_NEAR(f->get_float("llama.attention.layer_norm_rms_epsilon"), 1e-5, 1e-9);
  EXPECT_THROW(f->get_string("no.such.key"), ModelError);
  EXPECT_THROW(f->get_int("tokenizer.ggml.model"), ModelError);
  EXPECT_THROW(f->get_strings("tokenizer.ggml.scores"), ModelError);
  EXPECT_EQ(f->find("token_embd.weight"), nullptr);
  try {
    f->tensor("token_embd.weight");
    FAIL();
  } catch (const ModelError& e) {
    EXPECT_NE(std::string(e.what()).find("token_embd.weight"), std::string::npos);
  }
}

TEST(Gguf, TinyModelTensors) {
  DSI_REQUIRE_TESTDATA("tiny-bpe-untied-f16-q4emb.gguf");
  DSI_REQUIRE_TESTDATA("tiny-llama-spm-f16.gguf");
  auto f = GgufFile::open(test::testdata_path("tiny-bpe-untied-f16-q4emb.gguf"));
  EXPECT_EQ(f->tensors().size(), 30u);
  EXPECT_EQ(f->get_string("tokenizer.ggml.pre"), "smollm");
  EXPECT_DOUBLE_EQ(f->get_float("llama.rope.freq_base"), 100000.0);
  const GgufTensor& e = f->tensor("token_embd.weight");
  EXPECT_EQ(e.type, GgmlType::Q4_1);
  EXPECT_EQ(e.ne, (std::vector<int64_t>{192, 49152}));
  EXPECT_EQ(e.nbytes, 49152u * 6 * 20);
  const GgufTensor& k = f->tensor("blk.0.attn_k.weight");
  EXPECT_EQ(k.type, GgmlType::F16);
  EXPECT_EQ(k.ne, (std::vector<int64_t>{192, 64}));
  EXPECT_EQ(f->tensor("output_norm.weight").type, GgmlType::F32);
  auto g = GgufFile::open(test::testdata_path("tiny-llama-spm-f16.gguf"));
  EXPECT_EQ(g->tensors().size(), 38u);
  EXPECT_EQ(g->find("output.weight"), nullptr);  // tied
  int64_t params = 0;
  for (const auto& t : g->tensors()) params += t.n_elements();
  EXPECT_EQ(params, 11143424);
}

TEST(Gguf, MissingFileAndNotGguf) {
  const auto dir =
      std::filesystem::temp_directory_path() / ("dsi_gguf_test_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string text = (dir / "README.txt").string();
  std::ofstream(text) << "Plain text, long enough to hold a GGUF header if it were one.\n";
  EXPECT_THROW(GgufFile::open((dir / "no-such-file.gguf").string()), ModelError);
  EXPECT_THROW(GgufFile::open(text), ModelError);
  EXPECT_THROW(GgufFile::open(dir.string()), ModelError);
  // The same file with the right magic is read further and refused for what follows.
  std::ofstream(text, std::ios::binary) << "GGUF";
  EXPECT_THROW(GgufFile::open(text), ModelError);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace dsi
