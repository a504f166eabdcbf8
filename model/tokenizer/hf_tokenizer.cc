// Tokenizer::from_hf_json: a Hugging Face tokenizer.json with a byte-level BPE model, mapped
// onto the same VocabData as a GGUF vocabulary. The pre_tokenizer must be one of the layouts
// that pretokenize.h implements; anything else is refused by name rather than approximated.

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "model/mapped_file.h"
#include "model/tokenizer/tokenizer.h"

namespace dsi {

namespace {

using nlohmann::json;

constexpr std::string_view kGpt2Regex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S))";
constexpr std::string_view kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

json parse_json(const std::string& path) {
  try {
    return json::parse(read_text_file(path));
  } catch (const json::exception& e) {
    throw ModelError(fmt::format("{}: not valid JSON: {}", path, e.what()));
  }
}

std::string brief(const json& j) {
  std::string s = j.dump();
  return s.size() > 200 ? s.substr(0, 200) + "..." : s;
}

bool is_type(const json& j, std::string_view type) {
  return j.is_object() && j.contains("type") && j["type"].is_string() &&
         j["type"].get<std::string>() == type;
}

bool flag(const json& j, const char* key, bool fallback) {
  return j.contains(key) && j[key].is_boolean() ? j[key].get<bool>() : fallback;
}

// The pretokenize.h name for a pre_tokenizer section, or "" when it has no counterpart.
std::string pre_name(const json& pt) {
  auto byte_level = [](const json& j, bool use_regex) {
    return is_type(j, "ByteLevel") && !flag(j, "add_prefix_space", false) &&
           flag(j, "use_regex", true) == use_regex;
  };
  if (byte_level(pt, true)) return "gpt-2";
  if (!is_type(pt, "Sequence") || !pt.contains("pretokenizers") ||
      !pt["pretokenizers"].is_array()) {
    return "";
  }
  const json& seq = pt["pretokenizers"];
  if (seq.size() == 1 && byte_level(seq[0], true)) return "gpt-2";
  if (seq.size() != 2) return "";
  if (is_type(seq[0], "Digits") && flag(seq[0], "individual_digits", false) &&
      byte_level(seq[1], true)) {
    return "smollm";
  }
  if (is_type(seq[0], "Split") && byte_level(seq[1], false) && seq[0].contains("pattern") &&
      seq[0]["pattern"].is_object() && seq[0]["pattern"].contains("Regex") &&
      seq[0]["pattern"]["Regex"].is_string() && seq[0].value("behavior", "") == "Isolated" &&
      !flag(seq[0], "invert", false)) {
    const std::string re = seq[0]["pattern"]["Regex"].get<std::string>();
    if (re == kLlama3Regex) return "llama3";
    if (re == kQwen2Regex) return "qwen2";
    if (re == kGpt2Regex) return "gpt-2";
  }
  return "";
}

// "bos_token": "<s>" or {"content": "<s>", ...} or null.
std::string token_field(const json& cfg, const char* key) {
  if (!cfg.contains(key)) return "";
  const json& v = cfg[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) {
    return v["content"].get<std::string>();
  }
  return "";
}

}  // namespace

std::unique_ptr<Tokenizer> Tokenizer::from_hf_json(const std::string& path,
                                                   const std::string& config_path) {
  const json j = parse_json(path);
  auto fail = [&](const std::string& what) -> void {
    throw ModelError(fmt::format("{}: {}", path, what));
  };
  if (!j.is_object() || !j.contains("model") || !j["model"].is_object()) fail("no model section");
  const json& model = j["model"];
  if (model.contains("type") && !is_type(model, "BPE")) {
    fail(fmt::format("model type {} is not supported (BPE is)", brief(model["type"])));
  }
  if (flag(model, "byte_fallback", false)) {
    fail("a BPE model with byte_fallback (SentencePiece style) is not supported; use the GGUF");
  }
  for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (model.contains(k) && model[k].is_string() && !model[k].get<std::string>().empty()) {
      fail(fmt::format("model.{} is not supported", k));
    }
  }
  if (j.contains("normalizer") && !j["normalizer"].is_null() && !is_type(j["normalizer"], "NFC")) {
    // NFC is accepted: text given to encode is taken to be NFC already.
    fail(fmt::format("normalizer {} is not supported", brief(j["normalizer"])));
  }

  VocabData v;
  v.source = path;
  v.model = "gpt2";
  v.pre = j.contains("pre_tokenizer") ? pre_name(j["pre_tokenizer"]) : "";
  if (v.pre.empty()) {
    fail(fmt::format("pre_tokenizer {} is not supported (ByteLevel; Digits + ByteLevel; Split with "
                     "the GPT-2, Llama 3 or Qwen2 pattern + ByteLevel)",
                     brief(j.value("pre_tokenizer", json()))));
  }

  if (!model.contains("vocab") || !model["vocab"].is_object()) fail("model.vocab is not an object");
  constexpr int64_t kMaxId = 1 << 24;
  auto place = [&](int64_t id, const std::string& text, int32_t type) {
    if (id < 0 || id >= kMaxId) fail(fmt::format("token '{}' has id {} out of range", text, id));
    if (id >= static_cast<int64_t>(v.tokens.size())) {
      v.tokens.resize(id + 1);
      v.types.resize(id + 1, kTokenUnused);  // ids nobody names stay empty and unused
    }
    v.tokens[id] = text;
    v.types[id] = type;
  };
  for (auto it = model["vocab"].begin(); it != model["vocab"].end(); ++it) {
    if (!it.value().is_number_integer()) fail(fmt::format("vocab entry '{}' has no id", it.key()));
    place(it.value().get<int64_t>(), it.key(), kTokenNormal);
  }
  if (j.contains("added_tokens") && j["added_tokens"].is_array()) {
    for (const json& a : j["added_tokens"]) {
      if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() ||
          !a.contains("content") || !a["content"].is_string()) {
        fail(fmt::format("added token {} lacks id or content", brief(a)));
      }
      place(a["id"].get<int64_t>(), a["content"].get<std::string>(),
            flag(a, "special", false) ? kTokenControl : kTokenUserDefined);
    }
  }
  if (model.contains("merges")) {
    if (!model["merges"].is_array()) fail("model.merges is not an array");
    for (const json& m : model["merges"]) {
      if (m.is_string()) {
        const std::string s = m.get<std::string>();
        const size_t sp = s.find(' ', 1);
        if (sp == std::string::npos) fail(fmt::format("merge '{}' has no space", s));
        v.merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        v.merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
      } else {
        fail(fmt::format("merge {} is neither \"a b\" nor [a, b]", brief(m)));
      }
    }
  }

  auto id_of = [&](const std::string& text) -> Token {
    for (size_t i = 0; i < v.tokens.size(); ++i) {
      if (v.tokens[i] == text && !text.empty()) return static_cast<Token>(i);
    }
    return -1;
  };
  // BOS/EOS from the post-processor template: special tokens before / after the sequence.
  if (j.contains("post_processor") && is_type(j["post_processor"], "TemplateProcessing") &&
      j["post_processor"].contains("single") && j["post_processor"]["single"].is_array()) {
    const json& single = j["post_processor"]["single"];
    bool seen_seq = false;
    for (const json& item : single) {
      if (item.contains("Sequence")) {
        seen_seq = true;
      } else if (item.contains("SpecialToken") && item["SpecialToken"].contains("id") &&
                 item["SpecialToken"]["id"].is_string()) {
        const Token t = id_of(item["SpecialToken"]["id"].get<std::string>());
        if (t < 0) continue;
        if (!seen_seq) {
          v.bos = t;
          v.add_bos = true;
        } else {
          v.eos = t;
          v.add_eos = true;
        }
      }
    }
  }
  if (!config_path.empty()) {
    const json cfg = parse_json(config_path);
    if (!cfg.is_object()) throw ModelError(fmt::format("{}: not a JSON object", config_path));
    if (const std::string b = token_field(cfg, "bos_token"); !b.empty()) v.bos = id_of(b);
    if (const std::string e = token_field(cfg, "eos_token"); !e.empty()) v.eos = id_of(e);
    v.add_bos = flag(cfg, "add_bos_token", v.add_bos);
    v.add_eos = flag(cfg, "add_eos_token", v.add_eos);
  }
  if (v.eos < 0) v.eos = id_of("<|endoftext|>");
  if (v.add_bos && v.bos < 0) v.add_bos = false;
  if (v.add_eos && v.eos < 0) v.add_eos = false;
  return from_vocab(std::move(v));
}

}  // namespace dsi
