// Token trees against chains on a real model pair (not a test): speculative inference (SI)
// in one process, greedy, with the drafter expanding a tree of each shape level by level (one
// tree forward per depth, core/tree_draft.h) and the target verifying it in one tree forward
// (Engine::forward_tree, exact match, core/verify.h) and keeping the accepted path's KV. Per
// shape it prints the tokens each verification commits (accepted drafts + the target's own),
// the drafter's and the target's time per verification, the latency per token and its ratio
// to target-only decoding measured in the same run; every shape's text is checked token for
// token against target-only decoding. With --merge (a second drafter: a .gguf file or the
// target's layers to keep), every chain shape also runs with merged drafters as the runtime
// does them (docs/design.md, "Merged drafters"): the second drafter proposes its own token at
// each position of the lead's chain in one forward, and each differing proposal joins the
// verification as a leaf.
//
// usage: tree_bench TARGET.gguf [--drafter DRAFTER.gguf | --skip "0-11,19-29"]
//                   [--shapes "1,1,1,1;2,1,1,1;3,2,1,1"] [--tokens 64] [--prompts 10]
//                   [--threads 1] [--merge "0-15,24-29" | --merge SECOND.gguf]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "core/tree_draft.h"
#include "core/verify.h"
#include "engines/llama/llama_engine.h"
#include "model/text_model.h"

namespace {

using namespace dsi;
using Clock = std::chrono::steady_clock;
double secs(Clock::time_point a) {
  return std::chrono::duration<double>(Clock::now() - a).count();
}

std::vector<int> ints(const std::string& s) {
  std::vector<int> v;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    const size_t dash = item.find('-');
    if (dash != std::string::npos && dash > 0) {
      for (int i = std::stoi(item.substr(0, dash)); i <= std::stoi(item.substr(dash + 1)); ++i) {
        v.push_back(i);
      }
    } else if (!item.empty()) {
      v.push_back(std::stoi(item));
    }
  }
  return v;
}

const char* kPrompts[] = {
    "Tell me a short story about a robot who learns to paint.",
    "Write a Python function that checks whether a string is a palindrome.",
    "Explain how a hash table works.",
    "What are the main causes of the French Revolution?",
    "Write a haiku about autumn rain.",
    "How do I reverse a linked list in C?",
    "Give three tips for writing clear documentation.",
    "Describe the water cycle to a ten-year-old.",
    "Write a SQL query that returns the ten most recent orders.",
    "What is the difference between a process and a thread?",
};

struct Totals {
  int tokens = 0, verifications = 0;
  double draft_s = 0, target_s = 0, wall_s = 0;
  bool lossless = true;
  int siblings = 0;  // merged: verifications whose accepted path ended at the second's leaf
};

// Target-only greedy decoding of n tokens after the prompt.
std::vector<Token> target_only(Engine& t, const std::vector<Token>& prompt, int n, double* wall) {
  CancelFlag never;
  t.truncate(0);
  (void)t.forward(std::span(prompt).first(prompt.size() - 1), 0, never);
  std::vector<Token> out;
  Token last = prompt.back();
  const auto t0 = Clock::now();
  while (static_cast<int>(out.size()) < n) {
    last = t.forward(std::span(&last, 1), 1, never).argmax()[0];
    out.push_back(last);
  }
  *wall += secs(t0);
  return out;
}

// SI with trees of `shape`: n tokens after the prompt. With `second` (a chain shape), the
// second drafter's proposals along the lead's chain join each verification as leaves.
std::vector<Token> tree_si(Engine& t, Engine& d, const std::vector<Token>& prompt, int n,
                           const std::vector<int>& shape, Totals& tot, Engine* second = nullptr) {
  CancelFlag never;
  t.truncate(0);
  d.truncate(0);
  const auto head = std::span(prompt).first(prompt.size() - 1);
  (void)t.forward(head, 0, never);
  (void)d.forward(head, 0, never);
  std::vector<Token> held;  // the tokens whose KV the second drafter holds
  if (second) {
    second->truncate(0);
    (void)second->forward(head, 0, never);
    held.assign(head.begin(), head.end());
  }
  std::vector<Token> out;
  Token last = prompt.back();
  const auto t0 = Clock::now();
  while (static_cast<int>(out.size()) < n) {
    // Draft: the drafter's row after `last`, then the tree below it.
    auto c0 = Clock::now();
    const Logits first = d.forward(std::span(&last, 1), 1, never);
    const TokenTree drafts = draft_tree_greedy(d, first.row(0), shape, never);
    TokenTree verified = drafts;
    if (second) {
      // Its tokens at each chain position: one forward over `last` and the drafts but the last.
      std::vector<Token> seq(prompt.begin(), prompt.end());
      seq.insert(seq.end(), out.begin(), out.end());
      const size_t at = seq.size();  // the position of the first draft
      seq.insert(seq.end(), drafts.tokens.begin(), drafts.tokens.end() - 1);
      const int k = drafts.size();
      const size_t keep = std::min(common_prefix(held, seq), at - 1);
      second->truncate(static_cast<int>(keep));
      const std::vector<Token> props =
          second->forward_argmax(std::span(seq).subspan(keep), k, never);
      held = seq;
      for (int i = 0; i < k; ++i) {
        if (props[i] != drafts.tokens[i]) verified.add(props[i], i - 1);
      }
    }
    tot.draft_s += secs(c0);
    // Verify: `last` on top of the drafts, in one tree forward.
    c0 = Clock::now();
    TokenTree v;
    v.add(last, -1);
    for (int i = 0; i < verified.size(); ++i) v.add(verified.tokens[i], verified.parents[i] + 1);
    const Logits l = t.forward_tree(v, 0, never);
    // Node i of the drafts is node i + 1 of v; -1 (after the committed text) is v's node 0.
    const std::vector<Token> ys = l.argmax();
    const TreeVerdict verdict = verify_tree_exact(verified, [&](int node) { return ys[node + 1]; });
    if (!verdict.path.empty() && verdict.path.back() >= drafts.size()) ++tot.siblings;
    std::vector<int> keep = {0};
    for (int node : verdict.path) keep.push_back(node + 1);
    t.keep_path(v, keep, never);
    tot.target_s += secs(c0);
    // The drafter keeps the accepted drafts it ran (all but the last level) and computes the
    // rest with the next draft's first forward.
    const int ran = drafted_nodes_run(drafts);
    std::vector<int> kept;
    for (int node : verdict.path) {
      if (node >= ran) break;
      kept.push_back(node);
    }
    d.keep_path(drafts, kept, never);
    std::vector<Token> rest;
    for (size_t i = kept.size(); i < verdict.path.size(); ++i) {
      rest.push_back(verified.tokens[verdict.path[i]]);
    }
    if (!rest.empty()) (void)d.forward(rest, 0, never);
    for (int node : verdict.path) out.push_back(verified.tokens[node]);
    out.push_back(verdict.next);
    last = verdict.next;
    ++tot.verifications;
  }
  tot.wall_s += secs(t0);
  out.resize(n);
  tot.tokens += n;
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr,
                 "usage: tree_bench TARGET.gguf [--drafter DRAFTER.gguf | --skip LAYERS] "
                 "[--shapes \"1,1,1,1;3,2,1,1\"] [--tokens 64] [--prompts 10] [--threads 1]\n");
    return 2;
  }
  const std::string target_path = argv[1];
  std::string drafter_path = target_path, skip, merge,
              shapes_arg = "1,1,1,1;2,1,1,1;3,1,1,1;2,2,1,1;3,2,1,1";
  int tokens = 64, prompts = 10, threads = 1;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--drafter")
      drafter_path = v;
    else if (k == "--skip")
      skip = v;
    else if (k == "--shapes")
      shapes_arg = v;
    else if (k == "--tokens")
      tokens = std::stoi(v);
    else if (k == "--prompts")
      prompts = std::min(10, std::stoi(v));
    else if (k == "--threads")
      threads = std::stoi(v);
    else if (k == "--merge")
      merge = v;
    else {
      std::fprintf(stderr, "tree_bench: unknown option %s\n", k.c_str());
      return 2;
    }
  }
  std::vector<std::vector<int>> shapes;
  {
    std::stringstream ss(shapes_arg);
    std::string item;
    while (std::getline(ss, item, ';')) {
      shapes.push_back(ints(item));
      if (const std::string why = invalid_tree_shape(shapes.back(), 256); !why.empty()) {
        std::fprintf(stderr, "tree_bench: shape '%s': %s\n", item.c_str(), why.c_str());
        return 2;
      }
    }
  }
  try {
    const auto text = TextModel::load(target_path);
    LlamaEngineOptions to;
    to.model_path = target_path;
    to.threads = threads;
    to.max_context = 1024;
    LlamaEngineOptions dopt = to;
    dopt.model_path = drafter_path;
    dopt.layers = ints(skip);
    auto target = make_llama_engine(to);
    auto drafter = make_llama_engine(dopt);
    std::unique_ptr<Engine> second;
    if (!merge.empty()) {
      LlamaEngineOptions sopt = to;
      if (merge.ends_with(".gguf")) {
        sopt.model_path = merge;
      } else {
        sopt.layers = ints(merge);
      }
      second = make_llama_engine(sopt);
    }
    std::printf("target %s, drafter %s%s%s, %d prompts x %d tokens, %d thread(s)\n",
                target_path.c_str(), drafter_path.c_str(), skip.empty() ? "" : " layers ",
                skip.c_str(), prompts, tokens, threads);

    std::vector<std::vector<Token>> prompt_ids, want;
    double ref_s = 0;
    for (int p = 0; p < prompts; ++p) {
      prompt_ids.push_back(text->prompt_tokens(kPrompts[p], true));
      want.push_back(target_only(*target, prompt_ids.back(), tokens, &ref_s));
    }
    const double ref_ms = ref_s * 1e3 / (prompts * tokens);
    std::printf("target only: %.2f ms/token\n\n", ref_ms);
    std::printf("%-12s %5s %8s %10s %10s %9s %9s %8s %8s\n", "shape", "nodes", "tok/ver",
                "draft_ms", "target_ms", "ms/token", "vs_tgt", "lossless", "verifs");
    std::vector<std::pair<std::vector<int>, bool>> rows;
    for (const auto& shape : shapes) {
      rows.push_back({shape, false});
      const bool chain = std::all_of(shape.begin(), shape.end(), [](int b) { return b == 1; });
      if (second && chain) rows.push_back({shape, true});
    }
    for (const auto& [shape, merged] : rows) {
      Totals tot;
      for (int p = 0; p < prompts; ++p) {
        const auto got = tree_si(*target, *drafter, prompt_ids[p], tokens, shape, tot,
                                 merged ? second.get() : nullptr);
        if (got != want[p]) tot.lossless = false;
      }
      std::string name;
      for (size_t i = 0; i < shape.size(); ++i) {
        if (i > 0) name += ',';
        name += std::to_string(shape[i]);
      }
      if (merged) name += " +2nd";
      const double ms = tot.wall_s * 1e3 / tot.tokens;
      std::printf("%-12s %5d %8.2f %10.2f %10.2f %9.2f %9.2f %8s %8d\n", name.c_str(),
                  tree_shape_nodes(shape), static_cast<double>(tot.tokens) / tot.verifications,
                  tot.draft_s * 1e3 / tot.verifications, tot.target_s * 1e3 / tot.verifications, ms,
                  ref_ms / ms, tot.lossless ? "yes" : "NO", tot.verifications);
      if (merged) {
        std::printf("%-12s %d of %d verifications ended at the second drafter's leaf\n", "",
                    tot.siblings, tot.verifications);
      }
      if (!tot.lossless) return 1;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tree_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
