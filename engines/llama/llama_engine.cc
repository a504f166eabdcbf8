// LlamaEngine (engines/llama/llama_engine.h): the pre-norm llama block, run for a block of
// tokens at once so that prefill and verification are matrix-matrix products.
#include "engines/llama/llama_engine.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>

#include "engines/llama/llama_hf_loader.h"
#include "engines/llama/llama_loader.h"
#include "kernels/attention.h"
#include "kernels/qmatmul.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/swiglu.h"

namespace dsi {
namespace {

// Multiply-adds (queries x keys x q_dim) below which attention runs on the calling thread.
constexpr int64_t kParallelAttentionWork = int64_t{1} << 17;

void add_inplace(float* x, const float* y, size_t n) {
  for (size_t i = 0; i < n; ++i) x[i] += y[i];
}

using kernels::MatmulJob;
using kernels::WeightMatrix;

// Rows [r0, r0 + n) of w.
WeightMatrix rows_of(const WeightMatrix& w, int64_t r0, int64_t n) {
  WeightMatrix v = w;
  v.data = w.row(r0);
  v.rows = n;
  return v;
}

// Columns [c0, c0 + n) of w, each row read with w's stride; c0 and n must be whole blocks of
// w's type.
WeightMatrix cols_of(const WeightMatrix& w, int64_t c0, int64_t n) {
  const int64_t block = ggml_block_size(w.type);
  if (c0 % block != 0 || n % block != 0) {
    throw std::invalid_argument("tensor parallelism: columns " + std::to_string(c0) + ".." +
                                std::to_string(c0 + n) + " of a " + ggml_type_name(w.type) +
                                " matrix are not whole blocks of " + std::to_string(block));
  }
  WeightMatrix v = w;
  v.data = w.data + ggml_row_size(w.type, c0);
  v.cols = n;
  return v;
}

// Columns [c0, c0 + n) of w copied into `out` as a matrix of its own (rows of n columns), so a
// shard holds only its part; the pages of w it read are then offered back to the kernel
// (MADV_PAGEOUT: clean file pages are dropped, anonymous ones kept or swapped, never lost), so
// that the rank's resident memory is its shard. The products give the same bits either way.
WeightMatrix packed_cols(const WeightMatrix& w, int64_t c0, int64_t n,
                         std::vector<std::vector<uint8_t>>& out) {
  const WeightMatrix v = cols_of(w, c0, n);
  const size_t row = ggml_row_size(w.type, n);
  std::vector<uint8_t>& buf = out.emplace_back(static_cast<size_t>(w.rows) * row);
  for (int64_t r = 0; r < w.rows; ++r) std::memcpy(buf.data() + r * row, v.row(r), row);
#ifdef MADV_PAGEOUT
  const auto page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const auto begin = (reinterpret_cast<uintptr_t>(w.data) + page - 1) / page * page;
  const auto end = (reinterpret_cast<uintptr_t>(w.data) + w.bytes()) / page * page;
  if (end > begin) {
    (void)madvise(reinterpret_cast<void*>(begin), end - begin, MADV_PAGEOUT);
  }
#endif
  WeightMatrix m = v;
  m.data = buf.data();
  m.row_bytes = row;
  return m;
}

const float* part(const std::vector<float>& v, size_t off) {
  return v.empty() ? nullptr : v.data() + off;
}

}  // namespace

std::shared_ptr<LlamaModel> load_llama_model(const std::string& path,
                                             const std::vector<int>& layers) {
  return std::filesystem::is_directory(path) ? load_llama_safetensors(path, layers)
                                             : load_llama_gguf(path, layers);
}

std::vector<int> llama_kept_layers(const LlamaModel& m, const std::vector<int>& requested) {
  std::vector<int> layers = requested;
  if (layers.empty()) {
    for (int i = 0; i < m.config.n_layers; ++i) layers.push_back(i);
  }
  for (size_t i = 0; i < layers.size(); ++i) {
    const int l = layers[i];
    if (l < 0 || l >= m.config.n_layers) {
      throw std::invalid_argument("layer " + std::to_string(l) + " is not in the model (0.." +
                                  std::to_string(m.config.n_layers - 1) + ")");
    }
    if (i > 0 && l <= layers[i - 1]) {
      throw std::invalid_argument("kept layers must be strictly increasing");
    }
    if (static_cast<size_t>(l) >= m.weights.layers.size() || !m.weights.layers[l].loaded()) {
      throw std::invalid_argument("layer " + std::to_string(l) + " was not loaded");
    }
  }
  return layers;
}

void check_llama_forward(std::span<const Token> tokens, int n_logits, int kv_len, int max_ctx,
                         int n_vocab) {
  const int n = static_cast<int>(tokens.size());
  if (n_logits < 0 || n_logits > n) throw std::invalid_argument("n_logits out of range");
  if (kv_len + n > max_ctx) {
    throw std::length_error("forward of " + std::to_string(n) + " tokens at position " +
                            std::to_string(kv_len) + " exceeds the context of " +
                            std::to_string(max_ctx));
  }
  for (Token t : tokens) {
    if (t < 0 || t >= n_vocab) throw std::out_of_range("token id out of vocab");
  }
}

std::string tensor_parallel_refusal(const LlamaConfig& c, int n) {
  if (n < 1) return "tensor parallelism must be at least 1, got " + std::to_string(n);
  if (c.n_heads % n != 0) {
    return "tensor parallelism of " + std::to_string(n) + " does not divide the " +
           std::to_string(c.n_heads) + " attention heads";
  }
  if (c.n_kv_heads % n != 0 && n % c.n_kv_heads != 0) {
    return "tensor parallelism of " + std::to_string(n) + " neither divides nor is a multiple of " +
           "the " + std::to_string(c.n_kv_heads) + " KV heads";
  }
  return {};
}

namespace {
// The MLP is split in whole blocks of the down projection's widest type.
int64_t mlp_unit(const LlamaModel& m, const std::vector<int>& layers) {
  int64_t unit = 1;
  for (int l : layers) unit = std::max(unit, ggml_block_size(m.weights.layers[l].w_down.type));
  return unit;
}
}  // namespace

std::string tensor_parallel_refusal(const LlamaModel& m, const std::vector<int>& layers, int n) {
  const LlamaConfig& c = m.config;
  if (std::string why = tensor_parallel_refusal(c, n); !why.empty()) return why;
  if (n == 1) return {};
  const int64_t units = c.ffn_dim / mlp_unit(m, layers);
  if (units < n) {
    return "tensor parallelism of " + std::to_string(n) + " exceeds the " + std::to_string(units) +
           " blocks of the MLP";
  }
  const int64_t q = static_cast<int64_t>(c.n_heads / n) * c.head_dim;
  for (int l : layers) {
    const GgmlType t = m.weights.layers[l].wo.type;
    if (q % ggml_block_size(t) != 0) {
      return "tensor parallelism of " + std::to_string(n) + ": a shard's " + std::to_string(q) +
             " columns of the attention output (layer " + std::to_string(l) + ") are not whole " +
             ggml_type_name(t) + " blocks of " + std::to_string(ggml_block_size(t));
    }
  }
  return {};
}

std::optional<LlamaConfig> read_llama_config(const std::string& path) {
  if (std::filesystem::is_directory(path)) return std::nullopt;
  return llama_config_from_gguf(*GgufFile::open(path));
}

std::unique_ptr<Engine> make_llama_engine(const LlamaEngineOptions& options) {
  return std::make_unique<LlamaEngine>(load_llama_model(options.model_path, options.layers),
                                       options);
}

LlamaEngine::LlamaEngine(std::shared_ptr<const LlamaModel> model, const LlamaEngineOptions& o)
    : model_(std::move(model)),
      layers_(llama_kept_layers(*model_, o.layers)),
      threads_(std::max(1, o.threads)),
      act_(o.activations),
      max_ctx_(o.max_context > 0 ? o.max_context : model_->config.max_context),
      pool_(threads_),
      after_layer_(o.after_layer) {
  if (max_ctx_ <= 0) throw std::invalid_argument("llama engine: max context must be positive");
  shard(o.tp);
  const size_t n = layers_.size() * static_cast<size_t>(max_ctx_) * kv_dim();
  k_cache_.reset(new float[n]);
  v_cache_.reset(new float[n]);
}

void LlamaEngine::shard(Collective* tp) {
  const LlamaConfig& c = model_->config;
  const int n = tp ? tp->size() : 1, r = tp ? tp->rank() : 0;
  tp_ = n > 1 ? tp : nullptr;
  if (const std::string why = tensor_parallel_refusal(c, n); !why.empty()) {
    throw std::invalid_argument(why);
  }
  heads_ = c.n_heads / n;
  // KV heads: split like the heads, or, when there are fewer than shards, the one whose group
  // holds this shard's heads (replicated on n / n_kv_heads shards).
  int kv0;
  if (c.n_kv_heads % n == 0) {
    kv_heads_ = c.n_kv_heads / n;
    kv0 = r * kv_heads_;
  } else {
    kv_heads_ = 1;
    kv0 = r * heads_ / (c.n_heads / c.n_kv_heads);
  }
  // MLP rows: whole blocks of the down projection's columns each (K-quants: 256), spread as
  // evenly as they go (Qwen2.5-1.5B's 35 blocks: 18 and 17).
  if (const std::string why = tensor_parallel_refusal(*model_, layers_, n); !why.empty()) {
    throw std::invalid_argument(why);
  }
  const int64_t unit = mlp_unit(*model_, layers_);
  const int64_t units = c.ffn_dim / unit;
  const int f0 = static_cast<int>(units * r / n * unit);
  ffn_ = static_cast<int>(units * (r + 1) / n * unit) - f0;
  // The LM head's rows (the vocabulary) split evenly.
  head_v0_ = static_cast<int>(static_cast<int64_t>(c.n_vocab) * r / n);
  head_ = rows_of(model_->weights.head(), head_v0_,
                  static_cast<int64_t>(c.n_vocab) * (r + 1) / n - head_v0_);
  const int hd = c.head_dim, q0 = r * heads_ * hd, k0 = kv0 * hd;
  for (int l : layers_) {
    const LlamaLayerWeights& L = model_->weights.layers[l];
    shard_.push_back({.wq = rows_of(L.wq, q0, q_dim()),
                      .wk = rows_of(L.wk, k0, kv_dim()),
                      .wv = rows_of(L.wv, k0, kv_dim()),
                      .wo = n > 1 ? packed_cols(L.wo, q0, q_dim(), packed_) : L.wo,
                      .w_gate = rows_of(L.w_gate, f0, ffn_),
                      .w_up = rows_of(L.w_up, f0, ffn_),
                      .w_down = n > 1 ? packed_cols(L.w_down, f0, ffn_, packed_) : L.w_down,
                      .bq = part(L.bq, q0),
                      .bk = part(L.bk, k0),
                      .bv = part(L.bv, k0)});
  }
}

size_t LlamaEngine::weight_bytes_per_token() const {
  const LlamaConfig& c = model_->config;
  const LlamaWeights& w = model_->weights;
  auto read = [](const WeightMatrix& m) {
    return static_cast<size_t>(m.rows) * ggml_row_size(m.type, m.cols);
  };
  size_t b = w.token_embd.row_bytes + read(head_) + c.dim * sizeof(float);
  for (const LayerShard& s : shard_) {
    b += read(s.wq) + read(s.wk) + read(s.wv) + read(s.wo) + read(s.w_gate) + read(s.w_up) +
         read(s.w_down) + 2 * c.dim * sizeof(float);
  }
  return b;
}

void LlamaEngine::all_reduce(float* x, size_t n, const CancelFlag& cancel) {
  if (tp_ && tp_->all_reduce(std::span(x, n), cancel.cancelled())) throw Cancelled();
}

float* LlamaEngine::k_cache(int slot, int pos) {
  return k_cache_.get() + (static_cast<size_t>(slot) * max_ctx_ + pos) * kv_dim();
}

float* LlamaEngine::v_cache(int slot, int pos) {
  return v_cache_.get() + (static_cast<size_t>(slot) * max_ctx_ + pos) * kv_dim();
}

size_t LlamaEngine::kv_bytes_per_token() const {
  return 2 * layers_.size() * kv_dim() * sizeof(float);
}

void LlamaEngine::ensure_scratch(int n) {
  if (n <= scratch_n_) return;
  const LlamaConfig& c = model_->config;
  const size_t un = n;
  x_.resize(un * c.dim);
  xb_.resize(un * c.dim);
  q_.resize(un * q_dim());
  att_.resize(un * std::max(q_dim(), c.dim));
  gate_.resize(un * ffn_);
  up_.resize(un * ffn_);
  pos_.resize(un);
  scratch_n_ = n;
}

Logits LlamaEngine::forward(std::span<const Token> tokens, int n_logits, const CancelFlag& cancel) {
  check_llama_forward(tokens, n_logits, kv_len_, max_ctx_, model_->config.n_vocab);
  tree_ = {};
  Logits out = run(tokens, {}, kv_len_, nullptr, n_logits, cancel);
  kv_len_ += static_cast<int>(tokens.size());
  return out;
}

Logits LlamaEngine::forward_tree(const TokenTree& tree, int from, const CancelFlag& cancel) {
  check_tree_forward(tree_, tree, from);
  const int size = tree.size();
  const std::span<const Token> fresh = std::span(tree.tokens).subspan(from);
  check_llama_forward(tree.tokens, 0, kv_len_, max_ctx_, model_->config.n_vocab);
  tree_ = {};
  const int start = kv_len_;
  std::vector<int> depth;
  tree_attention_mask(tree, from, start, mask_, depth);
  Logits out = run(fresh, depth, start + from, mask_.data(), size - from, cancel);
  tree_ = tree;
  return out;
}

void LlamaEngine::keep_path(const TokenTree& tree, std::span<const int> path,
                            const CancelFlag& cancel) {
  (void)cancel;  // moving rows is not worth interrupting
  if (!check_keep_path(tree_, tree, path)) return;
  // Row kv_len_ + path[d] moves to kv_len_ + d <= it; rows of later path nodes lie beyond both.
  const size_t row = static_cast<size_t>(kv_dim()) * sizeof(float);
  for (size_t slot = 0; slot < layers_.size(); ++slot) {
    for (size_t d = 0; d < path.size(); ++d) {
      if (path[d] == static_cast<int>(d)) continue;
      const int from = kv_len_ + path[d], to = kv_len_ + static_cast<int>(d);
      std::memcpy(k_cache(static_cast<int>(slot), to), k_cache(static_cast<int>(slot), from), row);
      std::memcpy(v_cache(static_cast<int>(slot), to), v_cache(static_cast<int>(slot), from), row);
    }
  }
  kv_len_ += static_cast<int>(path.size());
  tree_ = {};
}

Logits LlamaEngine::run(std::span<const Token> tokens, std::span<const int> depth, int row0,
                        const uint8_t* mask, int n_logits, const CancelFlag& cancel) {
  const LlamaConfig& c = model_->config;
  const LlamaWeights& w = model_->weights;
  const int n = static_cast<int>(tokens.size());
  Logits out{n_logits, c.n_vocab, {}};
  if (n == 0) return out;
  ensure_scratch(n);
  ThreadPool* pool = threads_ > 1 ? &pool_ : nullptr;
  const int start = row0;
  const size_t nd = static_cast<size_t>(n) * c.dim;
  for (int i = 0; i < n; ++i) pos_[i] = depth.empty() ? start + i : kv_len_ + depth[i];
  for (int i = 0; i < n; ++i) {
    kernels::weight_row(w.token_embd, tokens[i], x_.data() + static_cast<size_t>(i) * c.dim);
  }

  // K and V of the new tokens are written straight into the cache rows [start, start+n);
  // kv_len_ moves (in forward) only once every layer is done, so a cancelled forward leaves
  // rows beyond kv_len_ that nothing reads.
  for (size_t slot = 0; slot < layers_.size(); ++slot) {
    // A shard stops only where its group agrees to (all_reduce).
    if (!tp_ && cancel.cancelled()) throw Cancelled();
    const LlamaLayerWeights& L = w.layers[layers_[slot]];
    const LayerShard& S = shard_[slot];
    float* kc = k_cache(static_cast<int>(slot), start);
    float* vc = v_cache(static_cast<int>(slot), start);
    kernels::rmsnorm_cpu(xb_.data(), x_.data(), L.attn_norm.data(), n, c.dim, c.norm_eps);
    const MatmulJob qkv[] = {{q_.data(), &S.wq, S.bq}, {kc, &S.wk, S.bk}, {vc, &S.wv, S.bv}};
    kernels::qmatmul(qkv, xb_.data(), n, c.dim, pool, kernels::kernel_isa(), act_);
    kernels::rope_cpu(q_.data(), pos_.data(), n, heads_, c.head_dim, c.rope_dim, c.rope_base,
                      c.rope_layout);
    kernels::rope_cpu(kc, pos_.data(), n, kv_heads_, c.head_dim, c.rope_dim, c.rope_base,
                      c.rope_layout);
    const float* k0 = k_cache(static_cast<int>(slot), 0);
    const float* v0 = v_cache(static_cast<int>(slot), 0);
    auto heads = [&](int h) {
      kernels::attention_cpu(att_.data(), q_.data(), k0, v0, mask, n, start + n, start, heads_,
                             kv_heads_, c.head_dim, kv_dim(), h, h + 1);
    };
    // Waking the pool costs ~10 us: not worth it for a decode step over a short context.
    if (static_cast<int64_t>(n) * (start + n) * q_dim() < kParallelAttentionWork) {
      for (int h = 0; h < heads_; ++h) heads(h);
    } else {
      pool_.parallel_for(heads_, heads);
    }
    kernels::qmatmul(xb_.data(), att_.data(), S.wo, nullptr, n, pool, kernels::kernel_isa(), act_);
    all_reduce(xb_.data(), nd, cancel);  // the heads' shares of the output projection
    add_inplace(x_.data(), xb_.data(), nd);

    kernels::rmsnorm_cpu(xb_.data(), x_.data(), L.ffn_norm.data(), n, c.dim, c.norm_eps);
    const MatmulJob gate_up[] = {{gate_.data(), &S.w_gate, nullptr},
                                 {up_.data(), &S.w_up, nullptr}};
    kernels::qmatmul(gate_up, xb_.data(), n, c.dim, pool, kernels::kernel_isa(), act_);
    kernels::swiglu_cpu(gate_.data(), gate_.data(), up_.data(), static_cast<int64_t>(n) * ffn_);
    kernels::qmatmul(xb_.data(), gate_.data(), S.w_down, nullptr, n, pool, kernels::kernel_isa(),
                     act_);
    all_reduce(xb_.data(), nd, cancel);  // the MLP rows' shares of the down projection
    add_inplace(x_.data(), xb_.data(), nd);
    if (after_layer_) after_layer_(static_cast<int>(slot));
  }
  if (!tp_ && cancel.cancelled()) throw Cancelled();

  if (n_logits > 0) {
    const float* last = x_.data() + static_cast<size_t>(n - n_logits) * c.dim;
    kernels::rmsnorm_cpu(xb_.data(), last, w.output_norm.data(), n_logits, c.dim, c.norm_eps);
    out.data.resize(static_cast<size_t>(n_logits) * c.n_vocab);
    if (!tp_) {
      kernels::qmatmul(out.data.data(), xb_.data(), w.head(), nullptr, n_logits, pool,
                       kernels::kernel_isa(), act_);
    } else {
      // Vocab-parallel head: this shard's rows of the logits, zeros elsewhere, summed over the
      // group (adding zeros is exact, so the logits are the bits the whole head gives).
      const size_t vn = head_.rows, v0 = head_v0_;
      head_part_.resize(static_cast<size_t>(n_logits) * vn);
      kernels::qmatmul(head_part_.data(), xb_.data(), head_, nullptr, n_logits, pool,
                       kernels::kernel_isa(), act_);
      std::fill(out.data.begin(), out.data.end(), 0.0f);
      for (int i = 0; i < n_logits; ++i) {
        std::copy_n(head_part_.data() + i * vn, vn,
                    out.data.data() + static_cast<size_t>(i) * c.n_vocab + v0);
      }
      all_reduce(out.data.data(), out.data.size(), cancel);
    }
  }
  return out;
}

void LlamaEngine::truncate(int n) {
  if (n < 0 || n > kv_len_) throw std::out_of_range("truncate beyond the KV cache");
  kv_len_ = n;
  tree_ = {};
}

KvBlob LlamaEngine::export_kv(int begin, int end) const {
  if (begin < 0 || end > kv_len_ || begin > end) throw std::out_of_range("KV range");
  const size_t row = static_cast<size_t>(kv_dim()) * sizeof(float);
  const size_t span = (end - begin) * row;
  KvBlob kv{begin, end, std::vector<uint8_t>(2 * layers_.size() * span)};
  uint8_t* dst = kv.bytes.data();
  for (size_t slot = 0; slot < layers_.size(); ++slot) {
    const size_t off = (slot * max_ctx_ + begin) * row;
    std::memcpy(dst, reinterpret_cast<const uint8_t*>(k_cache_.get()) + off, span);
    std::memcpy(dst + span, reinterpret_cast<const uint8_t*>(v_cache_.get()) + off, span);
    dst += 2 * span;
  }
  return kv;
}

void LlamaEngine::import_kv(const KvBlob& kv) {
  if (kv.begin != kv_len_) throw std::invalid_argument("KV import must start at kv_len()");
  tree_ = {};
  if (kv.end < kv.begin || kv.end > max_ctx_) throw std::out_of_range("KV import range");
  const size_t row = static_cast<size_t>(kv_dim()) * sizeof(float);
  const size_t span = (kv.end - kv.begin) * row;
  if (kv.bytes.size() != 2 * layers_.size() * span) {
    throw std::invalid_argument("KV blob has " + std::to_string(kv.bytes.size()) +
                                " bytes, expected " + std::to_string(2 * layers_.size() * span) +
                                " (different model or kept layers?)");
  }
  const uint8_t* src = kv.bytes.data();
  for (size_t slot = 0; slot < layers_.size(); ++slot) {
    const size_t off = (slot * max_ctx_ + kv.begin) * row;
    std::memcpy(reinterpret_cast<uint8_t*>(k_cache_.get()) + off, src, span);
    std::memcpy(reinterpret_cast<uint8_t*>(v_cache_.get()) + off, src + span, span);
    src += 2 * span;
  }
  kv_len_ = kv.end;
}

}  // namespace dsi
