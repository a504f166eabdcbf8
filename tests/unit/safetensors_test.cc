// safetensors, sharded model folders, config.json and tokenizer.json, on files the tests write
// into a temporary folder (the tokenizer.json files converted from the reference GGUF
// vocabularies must reproduce their reference ids; that test skips without them,
// tests/test_data.h).
#include "model/safetensors.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "../test_data.h"
#include "kernels/half.h"
#include "model/gguf.h"
#include "model/tokenizer/tokenizer.h"

namespace dsi {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = fs::temp_directory_path() /
            (std::string("dsi-") + info->name() + "-" + std::to_string(::getpid()));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  std::string dir() const { return path_.string(); }

 private:
  fs::path path_;
};

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string safetensors_bytes(const json& header, const std::string& data) {
  std::string h = header.dump();
  while (h.size() % 8) h += ' ';  // writers pad the header with spaces
  std::string out(8, '\0');
  const uint64_t n = h.size();
  std::memcpy(out.data(), &n, 8);
  return out + h + data;
}

template <typename T>
std::string raw(std::initializer_list<T> v) {
  return std::string(reinterpret_cast<const char*>(std::data(v)), v.size() * sizeof(T));
}

// Tensors a: F32 [2, 3], b: F16 [4], c: BF16 [2, 2], d: I64 [1].
std::string sample_file() {
  std::string data = raw<float>({1, 2, 3, 4, 5, 6});
  data += raw<uint16_t>({fp32_to_fp16(0.5f), fp32_to_fp16(-1), fp32_to_fp16(2), 0});
  data += raw<uint16_t>({fp32_to_bf16(1), fp32_to_bf16(-2), fp32_to_bf16(3), fp32_to_bf16(4)});
  data += raw<int64_t>({7});
  json h = {{"__metadata__", {{"format", "pt"}}},
            {"a", {{"dtype", "F32"}, {"shape", {2, 3}}, {"data_offsets", {0, 24}}}},
            {"b", {{"dtype", "F16"}, {"shape", {4}}, {"data_offsets", {24, 32}}}},
            {"c", {{"dtype", "BF16"}, {"shape", {2, 2}}, {"data_offsets", {32, 40}}}},
            {"d", {{"dtype", "I64"}, {"shape", {1}}, {"data_offsets", {40, 48}}}}};
  return safetensors_bytes(h, data);
}

std::string error_of(const std::string& bytes) {
  try {
    SafetensorsFile::parse(bytes.data(), bytes.size(), "m.safetensors");
  } catch (const ModelError& e) {
    return e.what();
  }
  return "";
}

TEST(Safetensors, ParsesShapesAndDtypes) {
  TempDir tmp;
  write_file(tmp.file("model.safetensors"), sample_file());
  auto f = SafetensorsFile::open(tmp.file("model.safetensors"));
  EXPECT_EQ(f->tensors().size(), 4u);
  EXPECT_EQ(f->metadata().at("format"), "pt");
  const auto& a = f->tensor("a");
  EXPECT_EQ(a.type, GgmlType::F32);
  EXPECT_EQ(a.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(a.ne, (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(f->to_float(a), (std::vector<float>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(f->to_float(f->tensor("b")), (std::vector<float>{0.5f, -1, 2, 0}));
  EXPECT_EQ(f->to_float(f->tensor("c")), (std::vector<float>{1, -2, 3, 4}));
  ASSERT_NE(f->find("d"), nullptr);
  try {
    f->tensor("d");
    FAIL();
  } catch (const ModelError& e) {
    EXPECT_NE(std::string(e.what()).find("'d' has dtype I64"), std::string::npos) << e.what();
  }
  EXPECT_THROW(f->tensor("zz"), ModelError);
  EXPECT_THROW(SafetensorsFile::open(tmp.file("missing.safetensors")), ModelError);
}

TEST(Safetensors, RejectsBadHeaders) {
  auto with = [](const json& entry, size_t data_size = 16) {
    return safetensors_bytes({{"t", entry}}, std::string(data_size, '\0'));
  };
  auto has = [](const std::string& bytes, const std::string& text) {
    const std::string m = error_of(bytes);
    EXPECT_NE(m.find(text), std::string::npos) << "message: " << m;
  };
  has("abc", "no header length");
  has(std::string("\xff\xff\xff\xff\xff\xff\xff\x7f", 8) + "{}", "header length");
  has(safetensors_bytes(json::array(), ""), "not a JSON object");
  {
    std::string b = sample_file();
    b[8] = '#';  // the opening brace of the JSON
    has(b, "not valid JSON");
  }
  has(with({{"dtype", "F32"}, {"shape", {4}}, {"data_offsets", {0, 32}}}),
      "tensor 't': data runs past end of file");
  has(with({{"dtype", "F32"}, {"shape", {3}}, {"data_offsets", {0, 16}}}), "16 bytes of data");
  has(with({{"dtype", "F32"}, {"shape", {-4}}, {"data_offsets", {0, 16}}}), "negative");
  has(with({{"dtype", "Q9"}, {"shape", {4}}, {"data_offsets", {0, 16}}}), "unknown dtype 'Q9'");
  has(with({{"dtype", "F32"}, {"shape", {4}}, {"data_offsets", {8, 0}}}), "past end");
  has(with({{"dtype", "F32"}, {"shape", {4}}}), "data_offsets missing");
  has(with({{"shape", {4}}, {"data_offsets", {0, 16}}}), "dtype missing");
  has(with({{"dtype", "F32"}, {"shape", {1ull << 40, 1ull << 40}}, {"data_offsets", {0, 16}}}),
      "does not fit");
  // Every truncation of a valid file is refused.
  const std::string full = sample_file();
  for (size_t cut = 0; cut < full.size(); ++cut) {
    EXPECT_FALSE(error_of(full.substr(0, cut)).empty()) << "cut at " << cut;
  }
}

TEST(Safetensors, ShardedFolder) {
  TempDir tmp;
  const std::string data = raw<float>({1, 2});
  write_file(tmp.file("s1.safetensors"),
             safetensors_bytes(
                 {{"x", {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {0, 8}}}}}, data));
  write_file(
      tmp.file("s2.safetensors"),
      safetensors_bytes({{"y", {{"dtype", "F32"}, {"shape", {1}}, {"data_offsets", {0, 4}}}}},
                        raw<float>({3})));
  write_file(tmp.file("model.safetensors.index.json"),
             json{{"weight_map", {{"x", "s1.safetensors"}, {"y", "s2.safetensors"}}}}.dump());
  auto m = SafetensorsModel::open_dir(tmp.dir());
  EXPECT_EQ(m->files().size(), 2u);
  EXPECT_EQ(m->tensors().size(), 2u);
  EXPECT_EQ(m->tensor("y").shape, (std::vector<int64_t>{1}));
  EXPECT_THROW(m->tensor("z"), ModelError);
  write_file(tmp.file("model.safetensors.index.json"),
             json{{"weight_map", {{"x", "../s1.safetensors"}}}}.dump());
  EXPECT_THROW(SafetensorsModel::open_dir(tmp.dir()), ModelError);
}

TEST(HfConfig, LlamaAndQwen2) {
  const HfConfig l = HfConfig::parse(R"({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
    "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
    "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
    "rope_scaling": {"rope_type": "llama3", "factor": 32.0}, "vocab_size": 128256,
    "tie_word_embeddings": true, "max_position_embeddings": 131072, "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009], "torch_dtype": "bfloat16"})",
                                     "config.json");
  EXPECT_EQ(l.hidden_size, 2048);
  EXPECT_EQ(l.num_key_value_heads, 8);
  EXPECT_EQ(l.head_dim, 64);
  EXPECT_DOUBLE_EQ(l.rope_theta, 500000.0);
  EXPECT_EQ(l.rope_scaling_type, "llama3");
  EXPECT_TRUE(l.tie_word_embeddings);
  EXPECT_FALSE(l.is_qwen2);
  EXPECT_FALSE(l.attention_bias);
  EXPECT_EQ(l.eos_token_ids, (std::vector<int>{128001, 128008, 128009}));
  EXPECT_EQ(l.architectures, (std::vector<std::string>{"LlamaForCausalLM"}));

  const HfConfig q = HfConfig::parse(R"({
    "architectures": ["Qwen2ForCausalLM"], "hidden_size": 896, "intermediate_size": 4864,
    "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "vocab_size": 151936,
    "tie_word_embeddings": true, "max_position_embeddings": 32768, "rope_scaling": null,
    "eos_token_id": 151643})",
                                     "config.json");
  EXPECT_TRUE(q.is_qwen2);
  EXPECT_TRUE(q.attention_bias);
  EXPECT_EQ(q.rope_scaling_type, "");
  EXPECT_EQ(q.head_dim, 64);
  EXPECT_EQ(q.num_key_value_heads, 2);

  // Defaults: no num_key_value_heads means multi-head attention.
  const HfConfig d = HfConfig::parse(
      R"({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
          "num_attention_heads": 4, "vocab_size": 100})",
      "c.json");
  EXPECT_EQ(d.num_key_value_heads, 4);
  EXPECT_EQ(d.bos_token_id, -1);

  try {
    HfConfig::parse(R"({"hidden_size": 64})", "c.json");
    FAIL();
  } catch (const ModelError& e) {
    EXPECT_NE(std::string(e.what()).find("c.json: field 'intermediate_size' is missing"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(HfConfig::parse(R"({"hidden_size": "64"})", "c.json"), ModelError);
  EXPECT_THROW(HfConfig::parse("{", "c.json"), ModelError);
  EXPECT_THROW(HfConfig::load("/nonexistent/config.json"), ModelError);
}

// tokenizer.json with the same vocabulary and merges as a GGUF vocab file.
json hf_json_from_gguf(const std::string& gguf, const json& pre_tokenizer) {
  auto f = GgufFile::open(test::testdata_path(gguf));
  const auto tokens = f->get_strings("tokenizer.ggml.tokens");
  const auto types = f->get_ints("tokenizer.ggml.token_type");
  json vocab = json::object(), added = json::array();
  for (size_t i = 0; i < tokens.size(); ++i) {
    vocab[tokens[i]] = i;
    if (types[i] == kTokenControl) {
      added.push_back({{"id", i}, {"content", tokens[i]}, {"special", true}});
    }
  }
  return {{"version", "1.0"},
          {"added_tokens", added},
          {"normalizer", nullptr},
          {"pre_tokenizer", pre_tokenizer},
          {"post_processor", {{"type", "ByteLevel"}}},
          {"decoder", {{"type", "ByteLevel"}}},
          {"model",
           {{"type", "BPE"},
            {"byte_fallback", false},
            {"vocab", vocab},
            {"merges", f->get_strings("tokenizer.ggml.merges")}}}};
}

std::vector<std::pair<std::string, std::string>> cases_of(const std::string& vocab) {
  auto slurp = [](const std::string& p) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  };
  const std::string inp = slurp(test::testdata_path(vocab + ".inp"));
  std::istringstream out(slurp(test::testdata_path(vocab + ".out")));
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<std::pair<std::string, std::string>> cases;
  for (size_t pos = 0, e; (e = inp.find(sep, pos)) != std::string::npos; pos = e + sep.size()) {
    std::string line;
    std::getline(out, line);
    cases.emplace_back(inp.substr(pos, e - pos), line);
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

TEST(HfTokenizer, ConvertedGgufVocabsMatchReferenceIds) {
  for (const std::string vocab : {"ggml-vocab-gpt-2.gguf", "ggml-vocab-starcoder.gguf"}) {
    for (const std::string& file : {vocab, vocab + ".inp", vocab + ".out"}) {
      DSI_REQUIRE_TESTDATA(file);
    }
  }
  TempDir tmp;
  const json byte_level = {{"type", "ByteLevel"},
                           {"add_prefix_space", false},
                           {"trim_offsets", true},
                           {"use_regex", true}};
  const json digits_then_byte_level = {
      {"type", "Sequence"},
      {"pretokenizers", {{{"type", "Digits"}, {"individual_digits", true}}, byte_level}}};
  for (const auto& [vocab, pre, name] :
       {std::tuple{"ggml-vocab-gpt-2.gguf", byte_level, "gpt-2"},
        std::tuple{"ggml-vocab-starcoder.gguf", digits_then_byte_level, "smollm"}}) {
    write_file(tmp.file("tokenizer.json"), hf_json_from_gguf(vocab, pre).dump());
    auto tok = Tokenizer::from_hf_json(tmp.file("tokenizer.json"));
    EXPECT_EQ(tok->pre(), name);
    int passed = 0, total = 0;
    for (const auto& [text, expected] : cases_of(vocab)) {
      const auto ids = tok->encode(text, false);
      std::string want = expected;
      while (!want.empty() && want.back() == ' ') want.pop_back();
      EXPECT_EQ(show(ids), want) << text;
      passed += show(ids) == want;
      ++total;
    }
    EXPECT_EQ(total, 46);
    std::printf("tokenizer.json from %s: %d/%d cases pass\n", vocab, passed, total);
  }
}

// The 256 byte symbols of byte-level BPE in GPT-2's vocabulary order (its first 256 ids): the
// printable bytes '!'..'~', U+00A1..U+00AC and U+00AE..U+00FF stand for themselves, then every
// other byte b, in increasing order, is U+0100 + its rank among them.
std::vector<std::string> gpt2_byte_symbols() {
  std::vector<int> bytes, points;
  for (int b = 0; b < 256; ++b) {
    if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) {
      bytes.push_back(b);
      points.push_back(b);
    }
  }
  for (int b = 0, n = 0; b < 256; ++b) {
    if (std::find(bytes.begin(), bytes.end(), b) == bytes.end()) {
      bytes.push_back(b);
      points.push_back(256 + n++);
    }
  }
  std::vector<std::string> out;
  for (int cp : points) {  // UTF-8 of a code point below U+0800
    std::string s;
    if (cp < 0x80) {
      s += static_cast<char>(cp);
    } else {
      s += static_cast<char>(0xC0 | (cp >> 6));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    }
    out.push_back(s);
  }
  return out;
}

TEST(HfTokenizer, Gpt2ByteSymbolsAreTheReferenceVocabsFirstIds) {
  DSI_REQUIRE_TESTDATA("ggml-vocab-gpt-2.gguf");
  auto g = GgufFile::open(test::testdata_path("ggml-vocab-gpt-2.gguf"));
  const auto tokens = g->get_strings("tokenizer.ggml.tokens");
  ASSERT_GE(tokens.size(), 256u);
  EXPECT_EQ(std::vector<std::string>(tokens.begin(), tokens.begin() + 256), gpt2_byte_symbols());
}

TEST(HfTokenizer, Llama3StyleTemplateAndErrors) {
  TempDir tmp;
  // A small byte-level vocabulary: the 256 byte symbols of GPT-2, one merge and a BOS.
  const auto tokens = gpt2_byte_symbols();
  json vocab = json::object();
  for (int i = 0; i < 256; ++i) vocab[tokens[i]] = i;
  vocab["He"] = 256;
  const std::string llama3_re =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  json j = {
      {"added_tokens",
       {{{"id", 257}, {"content", "<|begin_of_text|>"}, {"special", true}},
        {{"id", 258}, {"content", "<|eot_id|>"}, {"special", true}},
        {{"id", 259}, {"content", "<my_tool>"}, {"special", false}}}},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"},
           {"pattern", {{"Regex", llama3_re}}},
           {"behavior", "Isolated"},
           {"invert", false}},
          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}}},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single",
         {{{"SpecialToken", {{"id", "<|begin_of_text|>"}, {"type_id", 0}}}},
          {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}}}},
      {"model",
       {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array({json::array({"H", "e"})})}}}};
  write_file(tmp.file("tokenizer.json"), j.dump());
  write_file(
      tmp.file("tokenizer_config.json"),
      json{{"eos_token", "<|eot_id|>"}, {"bos_token", {{"content", "<|begin_of_text|>"}}}}.dump());
  auto tok = Tokenizer::from_hf_json(tmp.file("tokenizer.json"), tmp.file("tokenizer_config.json"));
  EXPECT_EQ(tok->pre(), "llama3");
  EXPECT_EQ(tok->vocab_size(), 260);
  EXPECT_TRUE(tok->add_bos());
  EXPECT_EQ(tok->bos(), 257);
  EXPECT_EQ(tok->eos(), 258);
  EXPECT_TRUE(tok->is_eog(258));
  const auto ids = tok->encode("Hello<my_tool>", true);
  ASSERT_GE(ids.size(), 3u);
  EXPECT_EQ(ids[0], 257);
  EXPECT_EQ(ids[1], 256);      // "He" merged
  EXPECT_EQ(ids.back(), 259);  // user-defined tokens are always matched
  EXPECT_EQ(tok->decode(ids), "Hello<my_tool>");
  // Qwen2's pattern (digits one by one) maps too.
  std::string qwen_re = llama3_re;
  qwen_re.replace(qwen_re.find("{1,3}"), 5, "");
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = qwen_re;
  j["normalizer"] = {{"type", "NFC"}};
  write_file(tmp.file("tokenizer.json"), j.dump());
  EXPECT_EQ(Tokenizer::from_hf_json(tmp.file("tokenizer.json"))->pre(), "qwen2");

  auto error_with = [&](json bad) {
    write_file(tmp.file("bad.json"), bad.dump());
    try {
      Tokenizer::from_hf_json(tmp.file("bad.json"));
    } catch (const ModelError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  json b = j;
  b["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\w+";
  EXPECT_NE(error_with(b).find("pre_tokenizer"), std::string::npos);
  b = j;
  b["model"]["byte_fallback"] = true;
  EXPECT_NE(error_with(b).find("byte_fallback"), std::string::npos);
  b = j;
  b["model"]["type"] = "Unigram";
  EXPECT_NE(error_with(b).find("Unigram"), std::string::npos);
  b = j;
  b["normalizer"] = {{"type", "NFKC"}};
  EXPECT_NE(error_with(b).find("normalizer"), std::string::npos);
  b = j;
  b["model"]["vocab"]["x"] = -3;
  EXPECT_NE(error_with(b).find("out of range"), std::string::npos);
  write_file(tmp.file("bad.json"), "{\"model\": ");
  EXPECT_THROW(Tokenizer::from_hf_json(tmp.file("bad.json")), ModelError);
}

}  // namespace
}  // namespace dsi
