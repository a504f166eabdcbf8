// KV handoff between targets (docs/design.md, "KV handoff"). When a target's verification
// commits tokens, the other targets lack their KV: each would recompute those tokens at the
// front of its next forward. The target that holds the KV may instead send it over the data
// plane. KvPlanner, owned by the Scheduler, keeps the one model of what each target caches
// and plans the handoffs; KvCostModel decides `runtime.kv_handoff: auto`.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "common/token.h"

namespace dsi {

class KvCostModel {
 public:
  // bytes_per_token: the engines' KV blob per token; gbps: the data plane's bandwidth;
  // fixed_s: per-handoff overhead (two control messages, the source finishing its forward).
  KvCostModel(double bytes_per_token, double gbps, double fixed_s = 200e-6);

  // A target forward: `tokens` computed in `seconds`.
  void observe(int tokens, double seconds);
  // What `tokens` more tokens add to a forward: the least-squares slope of the observed
  // forwards once their lengths differ, before that the mean time per token (an upper bound:
  // it charges the fixed cost of a forward to its tokens), 0 before any observation.
  double recompute_s(int tokens) const;
  double transfer_s(int tokens) const;
  bool prefer_transfer(int tokens) const { return transfer_s(tokens) < recompute_s(tokens); }

 private:
  double bytes_per_token_, bytes_per_s_, fixed_s_;
  double n_ = 0, sx_ = 0, sy_ = 0, sxx_ = 0, sxy_ = 0;
};

// runtime.kv_handoff
enum class KvPolicy {
  kAuto,    // hand over when the cost model says a transfer beats recomputing
  kAlways,  // hand over every committed range a target lacks, and the prompt
  kNever,
};
const char* kv_policy_name(KvPolicy p);
std::optional<KvPolicy> parse_kv_policy(std::string_view s);

struct KvHandoffOptions {
  KvPolicy policy = KvPolicy::kNever;
  // The targets' KV per token; 0 when they cannot hand KV over (no data channel, KV layouts
  // that differ, an engine without exportable KV): no handoff is planned then.
  double bytes_per_token = 0;
  double gbps = 10;            // the data plane's bandwidth (runtime.kv_gbps)
  bool shared_device = false;  // two targets compute on one device
};

// KV handoffs of a run: planned by the scheduler, counted by the workers (or the simulator).
struct KvHandoffStats {
  int64_t planned = 0;
  int64_t imported = 0;
  int64_t imported_tokens = 0;
  int64_t sent_bytes = 0;
  int64_t fallbacks = 0;   // the destination recomputed (its cache or the source's moved on)
  int64_t not_needed = 0;  // the destination had computed the range itself meanwhile
  int64_t verified_on_imported = 0;  // verifications that attended to handed-over KV
  bool prompt = false;  // the prompt's KV was handed over instead of prefilled everywhere
};

// One planned handoff: target `src` sends the KV of tokens [begin, end) to target `dst`.
struct KvRange {
  int src = -1;
  int dst = -1;
  int begin = 0;
  int end = 0;
};

// What each target's KV cache holds, as far as the scheduler knows: set when a target
// reports a prefill or a verification, trimmed when a verification is cancelled, extended
// by the handoffs planned to it. Workers check every handoff against their own cache, so a
// wrong belief costs a recomputation, never a wrong token.
class KvPlanner {
 public:
  KvPlanner(int n_targets, KvHandoffOptions opts);

  // Whether handoffs are planned at all (a policy other than never, two targets or more,
  // KV that can be handed over).
  bool enabled() const { return enabled_; }
  KvPolicy policy() const { return opts_.policy; }
  const KvCostModel& cost() const { return cost_; }
  // The tokens whose KV target t is believed to hold.
  const std::vector<Token>& cached(int t) const { return cached_.at(t); }

  // Target t computed `seq` (a prefill or a verification): it caches the whole sequence.
  void computed(int t, std::span<const Token> seq);
  // A verification of `seq` (n_logits positions checked) on target t was cancelled: if it
  // had started, the worker kept at most the prefix it did not have to recompute.
  void cancelled(int t, std::span<const Token> seq, int n_logits);
  // A verification forward: `tokens` computed in `seconds` (feeds the cost model).
  void observe(int tokens, double seconds) { cost_.observe(tokens, seconds); }

  // Whether the prompt prefix (prefix_len tokens) goes from target 0 to the others instead
  // of being prefilled on each: with `always`, or when two targets share a device.
  bool hand_over_prompt(size_t prefix_len) const;
  // After target `src` reported a verification: hands the committed KV src holds to every
  // other target among the first n_active (-1: all) that lacks part of it, when the policy
  // (auto: the cost model) says so. The destinations' models are extended by the ranges
  // returned.
  std::vector<KvRange> plan_committed(int src, std::span<const Token> committed, int n_active = -1);
  // Records a handoff of committed[0, r.end) planned elsewhere (the prompt).
  void handed_over(const KvRange& r, std::span<const Token> committed);

 private:
  KvHandoffOptions opts_;
  bool enabled_;
  KvCostModel cost_;
  std::vector<std::vector<Token>> cached_;
};

}  // namespace dsi
