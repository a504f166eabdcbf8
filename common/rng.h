// Counter-based random numbers (Philox4x32-10, Salmon et al., SC'11): a pure function of
// (seed, request, position, purpose), so a token's randomness does not depend on which rank
// drew it, when, or how often the draw was repeated after a preemption.
#pragma once

#include <cstdint>

namespace dsi {

enum class RngPurpose : uint32_t {
  kSample = 1,    // drafting a token from q, and a target's own sample from p (same draw)
  kAccept = 2,    // the accept test of a draft
  kResidual = 3,  // the correction drawn from norm(max(0, p - q)) after a rejection
};

// Uniform in [0, 1) with 53 random bits.
double rng_uniform(uint64_t seed, uint64_t request, uint64_t position, RngPurpose purpose);

}  // namespace dsi
