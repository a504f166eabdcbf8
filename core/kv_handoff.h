// KV handoff between targets (docs/design.md, "KV handoff"). When a target's verification
// commits tokens, the other targets lack their KV: each would recompute those tokens at the
// front of its next forward. The coordinator may instead have the target that holds the KV
// send it over the data plane. KvCostModel makes that choice (runtime.kv_handoff: auto).
#pragma once

#include <cstdint>

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

}  // namespace dsi
