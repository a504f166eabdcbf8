#include "core/kv_handoff.h"

#include <algorithm>

namespace dsi {

KvCostModel::KvCostModel(double bytes_per_token, double gbps, double fixed_s)
    : bytes_per_token_(bytes_per_token), bytes_per_s_(gbps * 1e9), fixed_s_(fixed_s) {}

void KvCostModel::observe(int tokens, double seconds) {
  if (tokens <= 0 || seconds < 0) return;
  n_ += 1;
  sx_ += tokens;
  sy_ += seconds;
  sxx_ += static_cast<double>(tokens) * tokens;
  sxy_ += tokens * seconds;
}

double KvCostModel::recompute_s(int tokens) const {
  if (n_ == 0) return 0;
  const double var = sxx_ / n_ - (sx_ / n_) * (sx_ / n_);
  // Lengths that differ by less than a token on average say nothing about the slope.
  const double per_token = n_ >= 4 && var >= 0.25 ? (sxy_ / n_ - (sx_ / n_) * (sy_ / n_)) / var
                                                   : sy_ / sx_;
  return std::max(0.0, per_token) * tokens;
}

double KvCostModel::transfer_s(int tokens) const {
  return fixed_s_ + tokens * bytes_per_token_ / bytes_per_s_;
}

}  // namespace dsi
