#include "common/rng.h"

#include <array>

namespace dsi {
namespace {

using Block = std::array<uint32_t, 4>;

inline void mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = static_cast<uint64_t>(a) * b;
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

Block philox4x32_10(Block ctr, std::array<uint32_t, 2> key) {
  constexpr uint32_t kM0 = 0xD2511F53, kM1 = 0xCD9E8D57;
  constexpr uint32_t kW0 = 0x9E3779B9, kW1 = 0xBB67AE85;
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(kM0, ctr[0], hi0, lo0);
    mulhilo(kM1, ctr[2], hi1, lo1);
    ctr = {hi1 ^ ctr[1] ^ key[0], lo1, hi0 ^ ctr[3] ^ key[1], lo0};
    key[0] += kW0;
    key[1] += kW1;
  }
  return ctr;
}

}  // namespace

double rng_uniform(uint64_t seed, uint64_t request, uint64_t position, RngPurpose purpose) {
  // Counter: (position, request low bits, purpose); key: the seed.
  const Block out =
      philox4x32_10({static_cast<uint32_t>(position), static_cast<uint32_t>(position >> 32),
                     static_cast<uint32_t>(request),
                     static_cast<uint32_t>(purpose) ^ static_cast<uint32_t>(request >> 32) << 8},
                    {static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)});
  const uint64_t bits = (static_cast<uint64_t>(out[0]) << 32 | out[1]) >> 11;
  return static_cast<double>(bits) * 0x1.0p-53;
}

std::array<uint32_t, 4> rng_words(uint64_t seed, uint64_t request, uint32_t position,
                                  RngPurpose purpose, uint32_t block) {
  // Counter: (block, position, request low bits, purpose | 1 << 31); the top bit keeps these
  // counters apart from rng_uniform's, whose last word holds a purpose below 2^31.
  return philox4x32_10(
      {block, position, static_cast<uint32_t>(request),
       (static_cast<uint32_t>(purpose) ^ static_cast<uint32_t>(request >> 32) << 8) | 0x80000000u},
      {static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)});
}

double rng_uniform_at(uint64_t seed, uint64_t request, uint32_t position, RngPurpose purpose,
                      uint32_t index) {
  const auto w = rng_words(seed, request, position, purpose, index);
  const uint64_t bits = (static_cast<uint64_t>(w[0]) << 32 | w[1]) >> 11;
  return static_cast<double>(bits) * 0x1.0p-53;
}

}  // namespace dsi
