// The engine interface every model implementation (synthetic, llama CPU, llama CUDA,
// layer-skip drafter) provides to the worker loops. An engine owns one KV cache for one
// sequence; it knows nothing about MPI, tasks or the scheduler.
#pragma once

#include <chrono>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/cancel.h"
#include "common/error.h"
#include "common/token.h"
#include "common/token_tree.h"

namespace dsi {

class DataChannel;
struct DataKey;

// Logits of the last n positions of a forward: row-major (n, vocab).
struct Logits {
  int n = 0;
  int vocab = 0;
  std::vector<float> data;
  std::span<const float> row(int i) const {
    return {data.data() + static_cast<size_t>(i) * vocab, static_cast<size_t>(vocab)};
  }
  // The greedy token of each row: kernels::argmax_cpu (ties to the lowest index).
  std::vector<Token> argmax() const;
};

// KV of a token range [begin, end), opaque bytes in the engine's own layout.
struct KvBlob {
  int begin = 0;
  int end = 0;
  std::vector<uint8_t> bytes;
};

// Throws std::invalid_argument naming what is wrong with a malformed tree.
void check_tree(const TokenTree& tree);
// The checks of an engine that keeps a tree's KV (`kept`: the nodes it ran) before
// forward_tree(tree, from) and keep_path(tree, path); the latter returns false when the path is
// empty (nothing to keep).
void check_tree_forward(const TokenTree& kept, const TokenTree& tree, int from);
bool check_keep_path(const TokenTree& kept, const TokenTree& tree, std::span<const int> path);
// The tree attention of nodes [from, tree.size()) of a forward_tree over a cache of `cached`
// positions, the nodes at rows cached + i: mask (n, cached + tree.size()) with node from + r
// seeing the cache, its ancestors and itself (row r), and each node's depth.
void tree_attention_mask(const TokenTree& tree, int from, int cached, std::vector<uint8_t>& mask,
                         std::vector<int>& depth);

class Engine {
 public:
  virtual ~Engine() = default;

  // Runs `tokens` at positions [kv_len(), kv_len() + tokens.size()) and appends their KV.
  // Returns the logits of the last n_logits positions (0 <= n_logits <= tokens.size()).
  // Throws Cancelled if `cancel` was raised before it finished.
  virtual Logits forward(std::span<const Token> tokens, int n_logits, const CancelFlag& cancel) = 0;

  // forward(tokens, n_logits, cancel).argmax(), the greedy token of each of the last n_logits
  // positions, with the same effect on the KV cache and the same exceptions. An engine that
  // computes elsewhere (a GPU) overrides it to choose the tokens there, so that only n_logits
  // tokens cross to the host instead of n_logits * vocab logits; it must pick exactly the
  // tokens Logits::argmax would (lowest index on ties), or greedy decoding would stop being
  // the same on every engine.
  virtual std::vector<Token> forward_argmax(std::span<const Token> tokens, int n_logits,
                                            const CancelFlag& cancel) {
    return forward(tokens, n_logits, cancel).argmax();
  }

  // Token trees (SpecInfer): runs nodes [from, tree.size()) of `tree` in one call, node i at
  // position kv_len() + tree.depth(i), seeing the cache and its own ancestors only, so that
  // its logits are those of a chain forward of its path (the same bits on a batch-invariant
  // engine). Returns their logits, row r for node from + r. from > 0 grows the tree of the
  // previous call, whose nodes were exactly the first `from` of this one (a drafter expanding
  // a tree level by level); an engine that keeps the tree's KV throws std::logic_error
  // otherwise. kv_len() does not move:
  // keep_path then appends one path's KV. Throws as forward does, and std::invalid_argument
  // for a malformed tree. This default runs a chain forward per node (correct on any engine,
  // and slow); engines with a tree attention mask override it.
  virtual Logits forward_tree(const TokenTree& tree, int from, const CancelFlag& cancel);
  // After forward_tree: appends the KV of `path` at kv_len(), a top-down path of `tree` (the
  // tree forward_tree ran, or one grown from it) through nodes that forward_tree ran. Engines
  // that kept the tree's KV move it into place (no recomputation); any other call in between
  // (forward, truncate, import_kv) drops it, and keep_path then throws std::logic_error. This
  // default computes the path with a chain forward.
  virtual void keep_path(const TokenTree& tree, std::span<const int> path,
                         const CancelFlag& cancel);

  // Rolls the KV cache back to its first n positions (n <= kv_len()).
  virtual void truncate(int n) = 0;
  virtual int kv_len() const = 0;
  virtual int vocab_size() const = 0;

  // KV handoff between workers of the same model. Engines that cannot export throw.
  virtual KvBlob export_kv(int begin, int end) const {
    (void)begin;
    (void)end;
    throw Error("this engine cannot export its KV cache");
  }
  virtual void import_kv(const KvBlob& kv) {
    (void)kv;
    throw Error("this engine cannot import a KV cache");
  }
  // Bytes of an export_kv blob per token (0: the engine has no KV to hand off).
  virtual size_t kv_bytes_per_token() const { return 0; }
  // The hardware this engine computes on, "cpu@HOST" or "cuda:PCI_BUS_ID@HOST": engines with
  // equal names share it (the coordinator then hands the prompt's KV over rather than have
  // every target prefill it on the same device).
  virtual std::string device_name() const;

  // KV handoff over the data plane: send_kv sends the blob of [begin, end) to `dst` under
  // `key`; recv_kv waits for it (false at the deadline or on cancel) and imports it at
  // kv_len() == begin. These defaults stage through host memory (export_kv / import_kv); a GPU
  // engine overrides them to move device memory when the channel can (NCCL).
  virtual void send_kv(DataChannel& ch, int dst, const DataKey& key, int begin, int end) const;
  virtual bool recv_kv(DataChannel& ch, const DataKey& key, int begin, int end,
                       std::chrono::steady_clock::time_point deadline, const CancelFlag* cancel);
};

}  // namespace dsi
