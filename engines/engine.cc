// The Engine defaults (engines/engine.h): KV handoff staged through host memory, token trees
// as chain forwards.
#include "engines/engine.h"

#include <unistd.h>

#include <algorithm>
#include <stdexcept>

#include "kernels/argmax.h"
#include "transport/data_channel.h"

namespace dsi {

std::vector<Token> Logits::argmax() const {
  std::vector<Token> out(n);
  if (n > 0) kernels::argmax_cpu(out.data(), data.data(), n, vocab);
  return out;
}

void check_tree(const TokenTree& tree) {
  if (const std::string why = tree.invalid(); !why.empty()) {
    throw std::invalid_argument("malformed token tree: " + why);
  }
}

void check_tree_forward(const TokenTree& kept, const TokenTree& tree, int from) {
  check_tree(tree);
  if (from < 0 || from > tree.size())
    throw std::invalid_argument("forward_tree: from out of range");
  if (from > 0 && (kept.size() != from || !tree.grew_from(kept))) {
    throw std::logic_error("forward_tree: the first nodes are not the previous call's tree");
  }
}

bool check_keep_path(const TokenTree& kept, const TokenTree& tree, std::span<const int> path) {
  if (path.empty()) return false;
  if (kept.size() == 0 || !tree.grew_from(kept)) {
    throw std::logic_error("keep_path: this tree's KV is not kept (forward_tree it first)");
  }
  if (!tree.is_path(path))
    throw std::invalid_argument("keep_path: not a top-down path of the tree");
  if (path.back() >= kept.size()) {
    throw std::invalid_argument("keep_path: node " + std::to_string(path.back()) +
                                " was not run by forward_tree");
  }
  return true;
}

void tree_attention_mask(const TokenTree& tree, int from, int cached, std::vector<uint8_t>& mask,
                         std::vector<int>& depth) {
  // Ancestors sit at increasing rows in the order of their positions, so attention visits the
  // same keys in the same order as a chain forward of the node's path does.
  const int n = tree.size() - from, n_kv = cached + tree.size();
  depth.assign(n, -1);
  mask.assign(static_cast<size_t>(n) * n_kv, 0);
  for (int r = 0; r < n; ++r) {
    uint8_t* row = mask.data() + static_cast<size_t>(r) * n_kv;
    std::fill(row, row + cached, uint8_t{1});
    for (int a = from + r; a >= 0; a = tree.parents[a]) {
      row[cached + a] = 1;
      ++depth[r];
    }
  }
}

Logits Engine::forward_tree(const TokenTree& tree, int from, const CancelFlag& cancel) {
  check_tree(tree);
  if (from < 0 || from > tree.size())
    throw std::invalid_argument("forward_tree: from out of range");
  const int base = kv_len();
  Logits out{tree.size() - from, vocab_size(), {}};
  out.data.reserve(static_cast<size_t>(out.n) * out.vocab);
  try {
    for (int i = from; i < tree.size(); ++i) {
      const auto path = tree.path_tokens(i);
      const Logits one = forward(path, 1, cancel);
      out.data.insert(out.data.end(), one.data.begin(), one.data.end());
      truncate(base);
    }
  } catch (...) {
    if (kv_len() > base) truncate(base);
    throw;
  }
  return out;
}

void Engine::keep_path(const TokenTree& tree, std::span<const int> path, const CancelFlag& cancel) {
  if (!tree.is_path(path))
    throw std::invalid_argument("keep_path: not a top-down path of the tree");
  std::vector<Token> tokens;
  for (int n : path) tokens.push_back(tree.tokens[n]);
  (void)forward(tokens, 0, cancel);
}

std::string Engine::device_name() const {
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  return std::string("cpu@") + host;
}

void Engine::send_kv(DataChannel& ch, int dst, const DataKey& key, int begin, int end) const {
  ch.send(dst, key, export_kv(begin, end).bytes);
}

bool Engine::recv_kv(DataChannel& ch, const DataKey& key, int begin, int end,
                     std::chrono::steady_clock::time_point deadline, const CancelFlag* cancel) {
  KvBlob kv{begin, end, {}};
  if (!ch.recv(key, kv.bytes, deadline, cancel)) return false;
  import_kv(kv);
  return true;
}

}  // namespace dsi
