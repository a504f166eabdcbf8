// GGUF reader: the real test files open with the expected keys and tensors, and corrupted or
// truncated copies of them always end in ModelError (never a crash or a huge allocation).
#include "model/gguf.h"

#include <gtest/gtest.h>

namespace dsi {
namespace {

const std::string kDir = DSI_TESTDATA_DIR;

TEST(Gguf, VocabFileKeys) {
  auto f = GgufFile::open(kDir + "/ggml-vocab-llama-spm.gguf");
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
  auto f = GgufFile::open(kDir + "/tiny-bpe-untied-f16-q4emb.gguf");
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
  auto g = GgufFile::open(kDir + "/tiny-llama-spm-f16.gguf");
  EXPECT_EQ(g->tensors().size(), 38u);
  EXPECT_EQ(g->find("output.weight"), nullptr);  // tied
  int64_t params = 0;
  for (const auto& t : g->tensors()) params += t.n_elements();
  EXPECT_EQ(params, 11143424);
}

TEST(Gguf, MissingFileAndNotGguf) {
  EXPECT_THROW(GgufFile::open(kDir + "/no-such-file.gguf"), ModelError);
  EXPECT_THROW(GgufFile::open(kDir + "/README.txt"), ModelError);
  EXPECT_THROW(GgufFile::open(kDir), ModelError);
}

}  // namespace
}  // namespace dsi
