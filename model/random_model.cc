// Random llama GGUF models (model/random_model.h).
#include "model/random_model.h"

#include <cmath>
#include <stdexcept>

namespace dsi {
namespace {

// Counter-based normals: element e of a tensor is a pure function of (seed, tensor name, e):
// pair e/2 hashes two counters with splitmix64 and turns them into two normals by Box-Muller
// (cos for even e, sin for odd). Fast enough for 7B parameters, independent of chunking, and
// tensors do not depend on one another.
class Normal {
 public:
  Normal(uint64_t seed, const std::string& stream) : key_(seed * 0x9e3779b97f4a7c15ull) {
    for (char c : stream) key_ = (key_ ^ static_cast<uint8_t>(c)) * 0x100000001b3ull;  // FNV-1a
  }
  // Writes elements [first, first + n).
  void fill(float* out, int64_t first, int64_t n, float mean, float std) const {
    for (int64_t e = first; e < first + n;) {
      const uint64_t pair = static_cast<uint64_t>(e) / 2;
      // u1 in (0, 1], u2 in [0, 1)
      const double u1 = ((mix(2 * pair) >> 11) + 1) * (1.0 / 9007199254740992.0);
      const double u2 = (mix(2 * pair + 1) >> 11) * (1.0 / 9007199254740992.0);
      const double r = std::sqrt(-2.0 * std::log(u1));
      if (e % 2 == 0)
        out[e++ - first] = mean + std * static_cast<float>(r * std::cos(2 * M_PI * u2));
      if (e < first + n) {
        out[e++ - first] = mean + std * static_cast<float>(r * std::sin(2 * M_PI * u2));
      }
    }
  }

 private:
  uint64_t mix(uint64_t counter) const {
    uint64_t z = key_ + (counter + 1) * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  uint64_t key_;
};

// out = mean + std * N(0, 1) for the tensor's elements [first, first + n).
GgufWriter::Fill normal_fill(uint64_t seed, const std::string& name, float mean, float std) {
  const Normal g(seed, name);
  return [g, mean, std](float* out, int64_t first, int64_t n) { g.fill(out, first, n, mean, std); };
}

// A byte-fallback SPM vocabulary of exactly n tokens: <unk> <s> </s>, the 256 byte tokens,
// "▁", then pieces in order of length over a small alphabet ("▁" marks a word start), so every
// piece's prefixes exist and the BPE-by-score merges can reach it.
void spm_vocab(int n, std::vector<std::string>& tokens, std::vector<float>& scores,
               std::vector<int32_t>& types) {
  tokens = {"<unk>", "<s>", "</s>"};
  types = {2, 3, 3};  // unknown, control, control
  char hex[8];
  for (int b = 0; b < 256; ++b) {
    std::snprintf(hex, sizeof hex, "<0x%02X>", b);
    tokens.push_back(hex);
    types.push_back(6);
  }
  const std::string alphabet = "etaoinshrdlucmfwypvbgkjqxz";
  const std::string space = "\xe2\x96\x81";  // U+2581
  tokens.push_back(space);  // the lone word-start marker: spaces must not need byte tokens
  types.push_back(1);
  std::vector<std::string> level = {""};
  while (static_cast<int>(tokens.size()) < n) {
    std::vector<std::string> next_level;
    for (const auto& p : level) {
      for (char c : alphabet) next_level.push_back(p + c);
    }
    for (const auto& p : next_level) {
      for (const std::string& piece : {space + p, p}) {
        if (static_cast<int>(tokens.size()) == n) break;
        tokens.push_back(piece);
        types.push_back(1);
      }
    }
    level = std::move(next_level);
  }
  scores.assign(tokens.size(), 0.0f);
  for (size_t i = 259; i < tokens.size(); ++i) scores[i] = -static_cast<float>(i - 259);
}

}  // namespace

RandomModelSpec random_model_shape(const std::string& name) {
  RandomModelSpec s;
  s.name = name;
  if (name == "tiny") return s;
  s.n_vocab = 32000;
  if (name == "llama-1b") {
    s.dim = 2048, s.n_layers = 22, s.n_heads = 32, s.n_kv_heads = 4, s.ffn_dim = 5632;
    s.tied_head = false;
  } else if (name == "llama-3b") {
    s.dim = 3200, s.n_layers = 26, s.n_heads = 32, s.n_kv_heads = 32, s.ffn_dim = 8640;
  } else if (name == "llama-7b") {
    s.dim = 4096, s.n_layers = 32, s.n_heads = 32, s.n_kv_heads = 32, s.ffn_dim = 11008;
    s.tied_head = false;
  } else {
    throw std::invalid_argument("unknown model shape '" + name +
                                "' (tiny, llama-1b, llama-3b, "
                                "llama-7b)");
  }
  s.context = 4096;
  return s;
}

void check_random_model_spec(const RandomModelSpec& s) {
  auto bad = [](const std::string& what) { throw std::invalid_argument("model shape: " + what); };
  if (s.dim <= 0 || s.n_layers <= 0 || s.n_heads <= 0 || s.n_kv_heads <= 0 || s.ffn_dim <= 0 ||
      s.context <= 0) {
    bad("dim, layers, heads, kv-heads, ffn and context must be positive");
  }
  if (s.dim % s.n_heads != 0) bad("heads must divide dim");
  if (s.n_heads % s.n_kv_heads != 0) bad("kv-heads must divide heads");
  if ((s.dim / s.n_heads) % 2 != 0) bad("head_dim (dim / heads) must be even for RoPE");
  if (s.n_vocab < 259) bad("vocab must be at least 259 (3 specials + 256 byte tokens)");
  const int64_t block = ggml_block_size(s.type);
  if (block == 0) bad("unsupported element type");
  if (s.dim % block != 0 || s.ffn_dim % block != 0) {
    bad(std::string("dim and ffn must be multiples of ") + std::to_string(block) + " for " +
        ggml_type_name(s.type));
  }
}

int64_t random_model_params(const RandomModelSpec& s) {
  const int64_t d = s.dim, hd = s.dim / s.n_heads, kv = hd * s.n_kv_heads, f = s.ffn_dim;
  const int64_t block = 2 * d + d * d + 2 * d * kv + d * d + 3 * d * f;
  return s.n_vocab * d * (s.tied_head ? 1 : 2) + s.n_layers * block + d;
}

GgufWriter random_model_writer(const RandomModelSpec& s) {
  check_random_model_spec(s);
  GgufWriter w;
  const std::string a = "llama.";
  w.set_string("general.architecture", "llama");
  w.set_string("general.name", s.name);
  const uint32_t file_type = s.type == GgmlType::F32    ? 0
                             : s.type == GgmlType::F16  ? 1
                             : s.type == GgmlType::Q4_0 ? 2
                             : s.type == GgmlType::Q4_1 ? 3
                             : s.type == GgmlType::Q8_0 ? 7
                                                        : 32;  // MOSTLY_BF16
  w.set_u32("general.file_type", file_type);
  w.set_u32(a + "context_length", s.context);
  w.set_u32(a + "embedding_length", s.dim);
  w.set_u32(a + "block_count", s.n_layers);
  w.set_u32(a + "feed_forward_length", s.ffn_dim);
  w.set_u32(a + "attention.head_count", s.n_heads);
  w.set_u32(a + "attention.head_count_kv", s.n_kv_heads);
  w.set_u32(a + "rope.dimension_count", s.dim / s.n_heads);
  w.set_f32(a + "rope.freq_base", s.rope_base);
  w.set_f32(a + "attention.layer_norm_rms_epsilon", s.norm_eps);
  w.set_u32(a + "vocab_size", s.n_vocab);

  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t> types;
  spm_vocab(s.n_vocab, tokens, scores, types);
  w.set_string("tokenizer.ggml.model", "llama");
  w.set_string("tokenizer.ggml.pre", "default");
  w.set_strings("tokenizer.ggml.tokens", tokens);
  w.set_f32s("tokenizer.ggml.scores", scores);
  w.set_i32s("tokenizer.ggml.token_type", types);
  w.set_u32("tokenizer.ggml.unknown_token_id", 0);
  w.set_u32("tokenizer.ggml.bos_token_id", 1);
  w.set_u32("tokenizer.ggml.eos_token_id", 2);
  w.set_bool("tokenizer.ggml.add_bos_token", true);
  w.set_bool("tokenizer.ggml.add_eos_token", false);

  const int64_t d = s.dim, hd = s.dim / s.n_heads, q = hd * s.n_heads, kv = hd * s.n_kv_heads,
                f = s.ffn_dim, v = s.n_vocab;
  const float sd = 1.0f / std::sqrt(static_cast<float>(d));
  const float sf = 1.0f / std::sqrt(static_cast<float>(f));
  auto mat = [&](const std::string& name, int64_t in, int64_t out, float std) {
    w.add_tensor(name, s.type, {in, out}, normal_fill(s.seed, name, 0.0f, std));
  };
  auto norm = [&](const std::string& name) {
    w.add_tensor(name, GgmlType::F32, {d}, normal_fill(s.seed, name, 1.0f, 0.1f));
  };
  mat("token_embd.weight", d, v, 0.05f);
  norm("output_norm.weight");
  if (!s.tied_head) mat("output.weight", d, v, 0.15f);
  for (int l = 0; l < s.n_layers; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    norm(b + "attn_norm.weight");
    mat(b + "attn_q.weight", d, q, sd);
    mat(b + "attn_k.weight", d, kv, sd);
    mat(b + "attn_v.weight", d, kv, sd);
    mat(b + "attn_output.weight", q, d, sd);
    norm(b + "ffn_norm.weight");
    mat(b + "ffn_gate.weight", d, f, sd);
    mat(b + "ffn_up.weight", d, f, sd);
    mat(b + "ffn_down.weight", f, d, sf);
  }
  return w;
}

}  // namespace dsi
