// The Qwen2.5-Coder pair (launch/fetch_model.sh qwen-coder-pair; the paths come through
// DSI_QWEN_CODER_1_5B_GGUF and DSI_QWEN_CODER_0_5B_GGUF, and each test skips without its
// file): hyperparameters of both files as the llama loader reads them, and the Qwen2 tokenizer
// built from each file's own vocabulary: decode(encode(x)) == x on code snippets and the
// ChatML control tokens. (Reference ids from an independent Qwen2 tokenizer are still to come.)
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "engines/llama/llama_loader.h"
#include "model/gguf.h"
#include "model/text_model.h"
#include "model/tokenizer/tokenizer.h"

namespace dsi {
namespace {

struct Pair {
  const char* env;
  int n_layers, dim, n_heads, n_kv_heads, ffn_dim;
};
const Pair k15B{"DSI_QWEN_CODER_1_5B_GGUF", 28, 1536, 12, 2, 8960};
const Pair k05B{"DSI_QWEN_CODER_0_5B_GGUF", 24, 896, 14, 2, 4864};

class QwenPair : public ::testing::TestWithParam<Pair> {
 protected:
  void SetUp() override {
    const char* p = std::getenv(GetParam().env);
    if (p == nullptr || *p == '\0') {
      GTEST_SKIP() << GetParam().env
                   << " is not set (launch/fetch_model.sh qwen-coder-pair fetches the pair)";
    }
    path_ = p;
  }
  std::string path_;
};

TEST_P(QwenPair, ConfigIsQwen2WithBiasesAndUntiedHead) {
  const auto f = GgufFile::open(path_);
  const LlamaConfig c = llama_config_from_gguf(*f);
  EXPECT_EQ(c.arch, "qwen2");
  EXPECT_EQ(c.n_vocab, 151936);
  EXPECT_EQ(c.n_layers, GetParam().n_layers);
  EXPECT_EQ(c.dim, GetParam().dim);
  EXPECT_EQ(c.n_heads, GetParam().n_heads);
  EXPECT_EQ(c.n_kv_heads, GetParam().n_kv_heads);
  EXPECT_EQ(c.ffn_dim, GetParam().ffn_dim);
  EXPECT_EQ(c.head_dim, GetParam().dim / GetParam().n_heads);
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_FALSE(c.tied_head);
  EXPECT_EQ(c.rope_layout, kernels::RopeLayout::kHalfSplit);
  EXPECT_EQ(c.rope_base, 1000000.0f);
  // Every tensor's type is one dsi reads.
  for (const GgufTensor& t : f->tensors()) {
    EXPECT_TRUE(ggml_type_supported(t.type)) << t.name << ": " << ggml_type_describe(t.type);
  }
}

TEST_P(QwenPair, CodeRoundTripAndChatTokens) {
  const auto f = GgufFile::open(path_);
  const auto tok = Tokenizer::from_gguf(*f);
  const std::vector<std::string> snippets = {
      "def fib(n: int) -> int:\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
      "#include <stdio.h>\nint main(void) {\n\tprintf(\"%d\\n\", 42);\n\treturn 0;\n}\n",
      "const xs = [1, 2, 3].map((x) => x ** 2); // squares\n",
      "SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name;\n",
      "    if (a != b && c <= d) { return -1; }  \n\n\n",
      "fn main() { let s = \"héllo wörld 🦀\"; println!(\"{s}\"); }\n",
      "x = {'ключ': 值, \"k\": None}  # mixed scripts\r\n"};
  for (const std::string& s : snippets) {
    const auto ids = tok->encode(s, /*add_special=*/false);
    EXPECT_LT(ids.size(), s.size()) << s;  // BPE merges code into fewer tokens than bytes
    EXPECT_EQ(tok->decode(ids), s);
  }
  // The ChatML control tokens of Qwen2 and how a prompt is wrapped.
  EXPECT_EQ(tok->token_id("<|endoftext|>"), 151643);
  EXPECT_EQ(tok->token_id("<|im_start|>"), 151644);
  EXPECT_EQ(tok->token_id("<|im_end|>"), 151645);
  EXPECT_TRUE(tok->is_eog(151645));
  const auto text = TextModel::load(path_);
  const auto prompt = text->prompt_tokens("Hello world", /*chat=*/true);
  const std::vector<Token> want = {151644, 872, 198, 9707, 1879, 151645, 198, 151644, 77091, 198};
  // The file's chat template opens a conversation without a system turn with its own.
  EXPECT_EQ(text->default_system(),
            "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.");
  const std::vector<Token> system =
      tok->encode("<|im_start|>system\n" + text->default_system() + "<|im_end|>\n", false, true);
  ASSERT_EQ(prompt.size(), system.size() + want.size());
  EXPECT_TRUE(std::equal(system.begin(), system.end(), prompt.begin()));
  // ... then <|im_start|>user\nHello world<|im_end|>\n<|im_start|>assistant\n
  EXPECT_TRUE(std::equal(want.begin(), want.end(), prompt.begin() + system.size()));
  const auto with_system = text->chat_tokens({{"system", "Be brief."}, {"user", "Hello world"}});
  std::vector<Token> expect = tok->encode("<|im_start|>system\nBe brief.<|im_end|>\n", false, true);
  expect.insert(expect.end(), want.begin(), want.end());
  EXPECT_EQ(with_system, expect);
}

INSTANTIATE_TEST_SUITE_P(Files, QwenPair, ::testing::Values(k15B, k05B), [](const auto& info) {
  return std::string(info.param.n_layers == 28 ? "Coder1_5B" : "Coder0_5B");
});

}  // namespace
}  // namespace dsi
