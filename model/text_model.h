// The text side of a real model on the coordinator: its tokenizer (from the GGUF file or the
// Hugging Face folder the workers load), the prompt as token ids (optionally in the model's
// chat template), and the tokens that end generation. Weights are never loaded here.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "model/tokenizer/tokenizer.h"

namespace dsi {

class TextModel {
 public:
  // Throws ModelError naming the path when it is missing or malformed.
  static std::shared_ptr<const TextModel> load(const std::string& path);

  // BOS as the model asks; with `chat`, the conversation of one user turn (chat_tokens)
  // when the vocabulary has ChatML, else the plain text.
  std::vector<Token> prompt_tokens(const std::string& text, bool chat) const;
  // A conversation (roles system, user, assistant) and the assistant's turn opened, in ChatML
  // when the vocabulary has it (opening with the model's default system turn, as its chat
  // template does, when the conversation has none); else the contents in order, a blank line
  // between them.
  struct Turn {
    std::string role, content;
  };
  std::vector<Token> chat_tokens(const std::vector<Turn>& turns) const;
  // The default system turn found in the model's chat template ("" when none).
  const std::string& default_system() const { return default_system_; }
  // The model's context length in tokens (0: the file does not say).
  int context_length() const { return context_; }
  // Every end-of-generation token (EOS, EOT, <|im_end|> ...).
  std::vector<Token> stop_tokens() const;
  const Tokenizer& tokenizer() const { return *tok_; }

 private:
  std::unique_ptr<GgufFile> gguf_;  // kept open: the tokenizer may view its strings
  std::unique_ptr<Tokenizer> tok_;
  int context_ = 0;
  std::string default_system_;  // from the chat template; empty: none
};

}  // namespace dsi
