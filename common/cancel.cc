// CancelFlag (common/cancel.h): the flag is a futex word, so that a sleeper wakes the moment
// it is raised.
#include "common/cancel.h"

#include "common/futex.h"

namespace dsi {

void CancelFlag::cancel() {
  flag_.store(1, std::memory_order_seq_cst);
  futex_wake_all(flag_, FutexScope::kProcess);
}

bool CancelFlag::sleep_until(Clock::time_point deadline) const {
  while (!cancelled() && Clock::now() < deadline) {
    futex_wait(flag_, 0, deadline, FutexScope::kProcess);
  }
  return !cancelled();
}

}  // namespace dsi
