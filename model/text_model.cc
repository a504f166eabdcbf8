#include "model/text_model.h"

#include <fmt/format.h>

#include <algorithm>
#include <climits>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>

#include "common/error.h"

namespace dsi {

namespace {

std::string chatml_default_system(const std::string& tmpl) {
  // The literal system turn of a ChatML template's branch for conversations that do not open
  // with one ('<|im_start|>system\nYou are ...<|im_end|>'): a literal between the markers,
  // with no quote, brace or '+' of template code inside.
  static const std::regex re(R"(<\|im_start\|>system(?:\n|\\n)([^'"{}+]+?)<\|im_end\|>)");
  std::smatch m;
  if (!std::regex_search(tmpl, m, re)) return "";
  std::string text = m[1].str(), out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '\\' && i + 1 < text.size() && text[i + 1] == 'n') {
      out += '\n';
      ++i;
    } else {
      out += text[i];
    }
  }
  return out;
}

}  // namespace

std::shared_ptr<const TextModel> TextModel::load(const std::string& path) {
  namespace fs = std::filesystem;
  auto m = std::make_shared<TextModel>();
  if (!fs::exists(path)) {
    throw ModelError(fmt::format("model '{}' does not exist (for the default model run "
                                 "launch/fetch_model.sh)",
                                 path));
  }
  if (fs::is_directory(path)) {
    const auto cfg = fs::path(path) / "tokenizer_config.json";
    m->tok_ = Tokenizer::from_hf_json((fs::path(path) / "tokenizer.json").string(),
                                      fs::exists(cfg) ? cfg.string() : "");
    if (fs::exists(cfg)) {
      std::ifstream in(cfg);
      const auto j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
      if (j.is_object() && j.contains("chat_template") && j["chat_template"].is_string()) {
        m->default_system_ = chatml_default_system(j["chat_template"].get<std::string>());
      }
    }
  } else {
    m->gguf_ = GgufFile::open(path);
    m->tok_ = Tokenizer::from_gguf(*m->gguf_);
    const GgufFile& g = *m->gguf_;
    if (g.has("tokenizer.chat_template")) {
      m->default_system_ = chatml_default_system(g.get_string("tokenizer.chat_template"));
    }
    if (g.has("general.architecture")) {
      const std::string key = g.get_string("general.architecture") + ".context_length";
      if (g.has(key))
        m->context_ = static_cast<int>(std::clamp<int64_t>(g.get_int(key), 0, INT_MAX));
    }
  }
  return m;
}

std::vector<Token> TextModel::chat_tokens(const std::vector<Turn>& turns) const {
  if (tok_->token_id("<|im_start|>") >= 0 && tok_->token_id("<|im_end|>") >= 0) {
    // The markup's special tokens are parsed, the contents' never: a message that spells
    // "<|im_end|>" cannot close its turn.
    std::vector<Token> out;
    if (tok_->add_bos() && tok_->bos() >= 0) out.push_back(tok_->bos());
    auto add = [&](const std::string& text, bool markup) {
      const auto ids = tok_->encode(text, /*add_special=*/false, /*parse_special=*/markup);
      out.insert(out.end(), ids.begin(), ids.end());
    };
    if (!default_system_.empty() && (turns.empty() || turns[0].role != "system")) {
      add("<|im_start|>system\n", true);
      add(default_system_, false);
      add("<|im_end|>\n", true);
    }
    for (const Turn& t : turns) {
      add(fmt::format("<|im_start|>{}\n", t.role), true);
      add(t.content, false);
      add("<|im_end|>\n", true);
    }
    add("<|im_start|>assistant\n", true);
    return out;
  }
  std::string text;
  for (const Turn& t : turns) text += (text.empty() ? "" : "\n\n") + t.content;
  return tok_->encode(text, /*add_special=*/true);
}

std::vector<Token> TextModel::prompt_tokens(const std::string& text, bool chat) const {
  if (chat && tok_->token_id("<|im_start|>") >= 0 && tok_->token_id("<|im_end|>") >= 0) {
    return chat_tokens({{"user", text}});
  }
  return tok_->encode(text, /*add_special=*/true);
}

std::vector<Token> TextModel::stop_tokens() const {
  std::vector<Token> out;
  for (Token t = 0; t < tok_->vocab_size(); ++t) {
    if (tok_->is_eog(t)) out.push_back(t);
  }
  return out;
}

}  // namespace dsi
