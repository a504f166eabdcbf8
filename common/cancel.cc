// CancelFlag (common/cancel.h): the flag is a futex word, so that a sleeper wakes the moment
// it is raised.
#include "common/cancel.h"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <climits>
#include <ctime>

namespace dsi {

static_assert(std::atomic<uint32_t>::is_always_lock_free && sizeof(std::atomic<uint32_t>) == 4,
              "a futex word must be a plain 32-bit integer");

void CancelFlag::cancel() {
  flag_.store(1, std::memory_order_seq_cst);
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&flag_), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr,
          nullptr, 0);
}

bool CancelFlag::sleep_until(Clock::time_point deadline) const {
  // FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC time, the clock of steady_clock.
  static_assert(std::is_same_v<Clock, std::chrono::steady_clock>);
  const auto ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(deadline.time_since_epoch()).count();
  const timespec ts{static_cast<time_t>(ns / 1000000000), static_cast<long>(ns % 1000000000)};
  while (!cancelled() && Clock::now() < deadline) {
    // Returns at once (EAGAIN) if the flag was raised after the check.
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(&flag_), FUTEX_WAIT_BITSET_PRIVATE, 0u, &ts,
            nullptr, FUTEX_BITSET_MATCH_ANY);
  }
  return !cancelled();
}

}  // namespace dsi
