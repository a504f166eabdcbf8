// Counter-based random numbers (Philox4x32-10, Salmon et al., SC'11): a pure function of
// (seed, request, position, purpose), so a token's randomness does not depend on which rank
// drew it, when, or how often the draw was repeated after a preemption.
#pragma once

#include <array>
#include <cstdint>

namespace dsi {

enum class RngPurpose : uint32_t {
  kSample = 1,    // drafting a token from q, and a target's own sample from p (same draw)
  kAccept = 2,    // the accept test of a draft
  kResidual = 3,  // the correction drawn from norm(max(0, p - q)) after a rejection
  kRace = 4,      // the per-token noise of the Gumbel coupling (core/verify.h)
};

// Uniform in [0, 1) with 53 random bits.
double rng_uniform(uint64_t seed, uint64_t request, uint64_t position, RngPurpose purpose);

// Uniform in [0, 1) with 53 random bits, the index-th of a family of draws at (seed, request,
// position, purpose) (e.g. one per sibling of a token tree); independent of rng_uniform's.
double rng_uniform_at(uint64_t seed, uint64_t request, uint32_t position, RngPurpose purpose,
                      uint32_t index);

// Four independent 32-bit words for entries 4 * block .. 4 * block + 3 of an indexed draw at
// (seed, request, position, purpose): one noise value per vocabulary entry. Positions are below
// 2^32 (they are token positions); the counter differs from rng_uniform's in its first word.
std::array<uint32_t, 4> rng_words(uint64_t seed, uint64_t request, uint32_t position,
                                  RngPurpose purpose, uint32_t block);

}  // namespace dsi
