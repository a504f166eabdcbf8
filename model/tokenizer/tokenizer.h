// Text <-> token ids for the two vocabulary kinds GGUF files carry: SentencePiece-style BPE by
// piece score ("llama", with byte fallback) and byte-level BPE by merge rank ("gpt2", with the
// pre-tokenizers of pretokenize.h). Loaded from a GGUF file or a Hugging Face tokenizer.json.
// No Unicode normalisation and no chat templates.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common/token.h"
#include "model/gguf.h"

namespace dsi {

// Token attributes as stored in tokenizer.ggml.token_type.
enum TokenType : int32_t {
  kTokenNormal = 1,
  kTokenUnknown = 2,
  kTokenControl = 3,
  kTokenUserDefined = 4,
  kTokenUnused = 5,
  kTokenByte = 6,
};

// Everything a tokenizer is built from, whatever the file format.
struct VocabData {
  std::string source;  // file name, for error messages
  std::string model;   // "llama" (SPM) or "gpt2" (byte-level BPE)
  std::string pre;     // pre-tokenizer name (gpt2 only)
  std::vector<std::string> tokens;
  std::vector<float> scores;   // SPM; may be empty for gpt2
  std::vector<int32_t> types;  // TokenType per token; empty means all normal
  std::vector<std::pair<std::string, std::string>> merges;  // gpt2, in rank order
  Token bos = -1, eos = -1, unk = -1;
  std::vector<Token> extra_eog;  // eot / eom / im_end ...
  bool add_bos = false;
  bool add_eos = false;
  bool add_space_prefix = false;
};

class Tokenizer {
 public:
  // tokenizer.ggml.model "llama" (SPM) or "gpt2" (byte-level BPE). Throws ModelError.
  static std::unique_ptr<Tokenizer> from_gguf(const GgufFile& f);
  // Hugging Face tokenizer.json (byte-level BPE) plus, when the path is not empty, the
  // tokenizer_config.json beside it (bos/eos tokens, add_bos_token). Throws ModelError.
  static std::unique_ptr<Tokenizer> from_hf_json(const std::string& tokenizer_json,
                                                 const std::string& tokenizer_config_json = "");
  static std::unique_ptr<Tokenizer> from_vocab(VocabData v);
  virtual ~Tokenizer();

  // add_special: prepend BOS when add_bos(), append EOS when the model asks for it.
  // parse_special: also recognise control-token texts ("<|im_start|>") in the input.
  // User-defined tokens are always recognised (as Hugging Face does for added tokens).
  virtual std::vector<Token> encode(std::string_view text, bool add_special,
                                    bool parse_special = false) const;
  // The bytes of the tokens, which may end inside a UTF-8 sequence. Control tokens (BOS, EOS,
  // ...) decode to nothing; for SPM the space that encode put in front of the text is removed
  // from the first token that produces text.
  virtual std::string decode(std::span<const Token> ids) const;

  // Bytes of one token as it appears in the middle of a text (no prefix-space stripping).
  std::string token_to_piece(Token t) const;
  // The stored token text ("▁the", "Ġthe", "<0x0A>"), or "" when out of range.
  const std::string& token_text(Token t) const;
  Token token_id(std::string_view text) const;  // -1 when absent
  int32_t token_type(Token t) const;

  int vocab_size() const { return static_cast<int>(v_.tokens.size()); }
  Token bos() const { return v_.bos; }
  Token eos() const { return v_.eos; }
  bool add_bos() const { return v_.add_bos; }
  bool add_eos() const { return v_.add_eos; }
  // Whether encode puts a space in front of the text (SPM); decode then strips one.
  bool add_space_prefix() const { return v_.add_space_prefix; }
  bool is_eog(Token t) const;  // end of generation: eos, eot, im_end, ...
  const std::string& model() const { return v_.model; }
  const std::string& pre() const { return v_.pre; }

 protected:
  explicit Tokenizer(VocabData v);
  // Tokenises one fragment of text without special tokens. `at_start` is true for the
  // first fragment and for one that follows a special token (SPM adds its space there).
  virtual void encode_fragment(std::string_view text, bool at_start,
                               std::vector<Token>& out) const = 0;
  virtual std::string normal_piece(Token t) const = 0;

  VocabData v_;
  // Token text -> id over all tokens; views into v_.tokens, which never changes after
  // construction.
  std::unordered_map<std::string_view, Token> token_to_id_;
  // Tokens matched literally in the input: user-defined always, control/unknown with
  // parse_special. Grouped by first byte, longest first, so the longest match wins.
  std::vector<Token> specials_by_byte_[256];
};

// Streams text as tokens are committed: push returns the new complete UTF-8 text for each
// token and holds back an incomplete multi-byte sequence until it completes; bytes that can
// never become valid UTF-8 are passed through as they are. flush returns whatever is held.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tok) : tok_(tok) {}
  std::string push(Token t);
  std::string flush();

 private:
  const Tokenizer& tok_;
  std::string pending_;
  bool at_start_ = true;
};

}  // namespace dsi
