// The llama engine on the CPU: dsi::Engine over a LlamaModel with a float32 KV cache. The
// same class is the layer-skip self-drafter (Draft & Verify) when it is given a subset of the
// model's layers. Products read the weights in their file types (kernels/qmatmul.h) with
// rows split over a thread pool, as are attention heads; every kernel computes a position's
// values with the same arithmetic whatever the batch or thread count, so decode, verify and
// prefill give bit-identical logits.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/thread_pool.h"
#include "engines/engine.h"
#include "engines/llama/llama_model.h"
#include "kernels/qmatmul.h"
#include "transport/collective.h"

namespace dsi {

struct LlamaEngineOptions {
  std::string model_path;  // GGUF file, or a Hugging Face folder (config.json + safetensors)
  int threads = 1;         // threads of the engine's own pool, the caller's included
  std::vector<int> layers; /* kept layers for the layer-skip drafter; empty = all */
  int max_context = 0;     /* 0 = model's */
  // What enters the quantized products: exact float32, or rounded to 8 bits (faster, not
  // exact; kernels/qmatmul.h).
  kernels::Activations activations = kernels::Activations::kF32;
  // Test hook: called on the forward's thread each time a layer is done, with its slot (0 ..
  // kept layers - 1, in run order). Left empty outside tests.
  std::function<void(int slot)> after_layer;
  // Tensor parallelism (Megatron-style): this engine is shard tp->rank() of tp->size() of the
  // model. It computes its share of the attention heads (Q/K/V rows; the KV heads too, or one
  // replicated KV head when there are fewer than shards) and of the MLP's rows, multiplies its
  // columns of the output and down projections, and sums those over the group (one all-reduce
  // after attention, one after the MLP); the LM head is vocab-parallel (each shard computes
  // its rows of the logits, gathered by one more all-reduce); embedding and norms are
  // replicated. Its KV
  // cache holds only its KV heads. A cancel raised on any shard rides in the next all-reduce,
  // so every shard of the group stops at the same one and keeps the same KV (a shard never
  // leaves a collective its peers wait in). Null: the whole model. The group outlives the
  // engine.
  Collective* tp = nullptr;
};

// Loads options.model_path (only the kept layers; a directory is read as a Hugging Face
// folder, anything else as GGUF) and builds the engine. Throws ModelError for
// a missing tensor or a shape mismatch, std::invalid_argument for bad options.
std::unique_ptr<Engine> make_llama_engine(const LlamaEngineOptions& options);

// The model at `path` with only `layers` loaded (all when empty): a directory is read as a
// Hugging Face folder, anything else as GGUF.
std::shared_ptr<LlamaModel> load_llama_model(const std::string& path,
                                             const std::vector<int>& layers);

// Why `n` shards cannot split a model of config `c` by heads (empty: they can): n must divide
// the attention heads, and divide the KV heads or be a multiple of them. The MLP's block count
// is checked when the weights are there (LlamaEngine::shard).
std::string tensor_parallel_refusal(const LlamaConfig& c, int n);
// The same, and whole quantized blocks for each shard's columns of the kept `layers` (the MLP's
// blocks, the attention output's columns), on a loaded model (a mapped GGUF: no weight read).
std::string tensor_parallel_refusal(const LlamaModel& m, const std::vector<int>& layers, int n);
// The config of the GGUF file at `path`, read from its header (no weights); nullopt for a
// Hugging Face folder (checked when it loads). Throws ModelError for a malformed file.
std::optional<LlamaConfig> read_llama_config(const std::string& path);

// The layers an engine runs, in order: `requested`, or all of the model's when it is empty.
// Throws std::invalid_argument for a layer out of range, not loaded, or out of order.
std::vector<int> llama_kept_layers(const LlamaModel& model, const std::vector<int>& requested);

// The checks every llama engine's forward makes before computing: n_logits in [0, n], the
// tokens fitting the context after kv_len, every id in the vocabulary.
void check_llama_forward(std::span<const Token> tokens, int n_logits, int kv_len, int max_ctx,
                         int n_vocab);

class LlamaEngine final : public Engine {
 public:
  // model must hold every layer named in options.layers (all of them when it is empty);
  // options.model_path is ignored. Several engines may share one model.
  LlamaEngine(std::shared_ptr<const LlamaModel> model, const LlamaEngineOptions& options);

  Logits forward(std::span<const Token> tokens, int n_logits, const CancelFlag& cancel) override;
  // One forward under a tree attention mask; the nodes' KV waits in the cache rows after
  // kv_len() until keep_path moves a path's rows into place.
  Logits forward_tree(const TokenTree& tree, int from, const CancelFlag& cancel) override;
  void keep_path(const TokenTree& tree, std::span<const int> path,
                 const CancelFlag& cancel) override;
  void truncate(int n) override;
  int kv_len() const override { return kv_len_; }
  int vocab_size() const override { return model_->config.n_vocab; }

  // Blob layout (native-endian float32): for each kept layer in run order, the K rows of
  // positions [begin, end) then the V rows, each row kv_dim floats (a shard's: its KV heads). Only
  // engines with the same model and kept layers can exchange blobs; import must start at kv_len().
  KvBlob export_kv(int begin, int end) const override;
  void import_kv(const KvBlob& kv) override;

  const LlamaConfig& config() const { return model_->config; }
  const std::vector<int>& layers() const { return layers_; }
  int max_context() const { return max_ctx_; }
  size_t kv_bytes_per_token() const override;
  // Bytes of weights one decode step reads: this engine's shard of every kept layer's matrices
  // (all of them without tensor parallelism), one embedding row, the LM head and the norms.
  size_t weight_bytes_per_token() const;

 private:
  float* k_cache(int slot, int pos);
  float* v_cache(int slot, int pos);
  void ensure_scratch(int n);
  // The forward of `tokens` into cache rows [row0, row0 + n): token i at position row0 + i
  // (depth empty: causal) or kv_len_ + depth[i] under `mask` (n, row0 + n). Returns the
  // logits of the last n_logits rows; moves nothing.
  Logits run(std::span<const Token> tokens, std::span<const int> depth, int row0,
             const uint8_t* mask, int n_logits, const CancelFlag& cancel);

  // What this engine computes of a kept layer: all of it, or its tensor-parallel shard.
  struct LayerShard {
    kernels::WeightMatrix wq, wk, wv, wo, w_gate, w_up, w_down;
    const float *bq = nullptr, *bk = nullptr, *bv = nullptr;
  };
  int kv_dim() const { return kv_heads_ * model_->config.head_dim; }
  int q_dim() const { return heads_ * model_->config.head_dim; }
  void shard(Collective* tp);
  // Sums x over the group; a cancel raised on any shard stops every shard here (Cancelled).
  void all_reduce(float* x, size_t n, const CancelFlag& cancel);

  std::shared_ptr<const LlamaModel> model_;
  std::vector<int> layers_;  // file layer numbers, in run order
  Collective* tp_ = nullptr;
  int heads_ = 0, kv_heads_ = 0, ffn_ = 0;  // this engine's share
  std::vector<LayerShard> shard_;           // by slot
  // A shard's columns of the output and down projections, packed (TP > 1): read in place
  // they would touch every page of the matrices.
  std::vector<std::vector<uint8_t>> packed_;
  kernels::WeightMatrix head_;    // the LM head's rows this engine computes
  int head_v0_ = 0;               // the first of them
  std::vector<float> head_part_;  // a shard's rows of the logits
  int threads_;
  kernels::Activations act_;
  int max_ctx_;
  int kv_len_ = 0;
  TokenTree tree_;  // the nodes forward_tree ran, while their KV waits after kv_len_
  std::vector<uint8_t> mask_;
  ThreadPool pool_;
  std::function<void(int)> after_layer_;
  // (n_kept_layers, max_ctx, kv_dim) each. Allocated without touching the memory, so pages
  // are committed only as the context grows.
  std::unique_ptr<float[]> k_cache_, v_cache_;
  // Scratch for a forward of n tokens, grown on demand.
  int scratch_n_ = 0;
  std::vector<float> x_, xb_, q_, att_, gate_, up_;
  std::vector<int32_t> pos_;
};

}  // namespace dsi
