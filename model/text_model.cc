#include "model/text_model.h"

#include <fmt/format.h>

#include <filesystem>

#include "common/error.h"

namespace dsi {

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
  } else {
    m->gguf_ = GgufFile::open(path);
    m->tok_ = Tokenizer::from_gguf(*m->gguf_);
  }
  return m;
}

std::vector<Token> TextModel::prompt_tokens(const std::string& text, bool chat) const {
  if (chat && tok_->token_id("<|im_start|>") >= 0 && tok_->token_id("<|im_end|>") >= 0) {
    return tok_->encode(
        fmt::format("<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n", text),
        /*add_special=*/true, /*parse_special=*/true);
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
