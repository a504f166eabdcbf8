#include "common/futex.h"

#include <linux/futex.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <climits>
#include <ctime>
#include <type_traits>

namespace dsi {
namespace {

static_assert(std::atomic<uint32_t>::is_always_lock_free && sizeof(std::atomic<uint32_t>) == 4,
              "a futex word must be a plain 32-bit integer");

uint32_t* address(const std::atomic<uint32_t>& word) {
  return reinterpret_cast<uint32_t*>(const_cast<std::atomic<uint32_t>*>(&word));
}

int op(int base, FutexScope scope) {
  return scope == FutexScope::kProcess ? base | FUTEX_PRIVATE_FLAG : base;
}

}  // namespace

void fine_timer_slack() {
  thread_local const bool set = prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0) == 0;
  (void)set;
}

void futex_wait(const std::atomic<uint32_t>& word, uint32_t expected, Clock::time_point deadline,
                FutexScope scope) {
  // FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC time, the clock of steady_clock.
  static_assert(std::is_same_v<Clock, std::chrono::steady_clock>);
  fine_timer_slack();
  const auto ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(deadline.time_since_epoch()).count();
  const timespec ts{static_cast<time_t>(ns / 1000000000), static_cast<long>(ns % 1000000000)};
  // EAGAIN (the word changed), ETIMEDOUT, EINTR: the caller re-checks either way.
  syscall(SYS_futex, address(word), op(FUTEX_WAIT_BITSET, scope), expected, &ts, nullptr,
          FUTEX_BITSET_MATCH_ANY);
}

void futex_wake_all(const std::atomic<uint32_t>& word, FutexScope scope) {
  syscall(SYS_futex, address(word), op(FUTEX_WAKE, scope), INT_MAX, nullptr, nullptr, 0);
}

}  // namespace dsi
