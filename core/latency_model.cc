#include "core/latency_model.h"

#include <climits>
#include <cmath>

namespace dsi {

double ideal_latency_ms(Mode mode, const LatencyInputs& in, int k) {
  const double a = in.a, c = in.c_ms;
  switch (mode) {
    case Mode::kNonSi:
      return in.target_ms(1);
    case Mode::kSi: {
      const double t = in.target_ms(k + 1);
      // a = 1: every window of k drafts plus the bonus token is accepted.
      return a >= 1 ? (k * c + t) / (k + 1) : (k * c + t) * (1 - a) / (1 - std::pow(a, k + 1));
    }
    case Mode::kDsi: {
      const double t = in.target_ms(k + 1);
      // a = 1: the chain never ends; the drafter's pace, c per token, is the latency.
      return a >= 1 ? c : (1 - a) * (t + k * c * a / (1 - std::pow(a, k)));
    }
  }
  return 0;
}

int dsi_sp_needed(const LatencyInputs& in, int k) {
  if (in.c_ms <= 0) return INT_MAX;
  const double n = std::ceil(in.target_ms(k + 1) / (k * in.c_ms) - 1e-9);
  return n < 1 ? 1 : (n > INT_MAX / 2 ? INT_MAX : static_cast<int>(n));
}

}  // namespace dsi
