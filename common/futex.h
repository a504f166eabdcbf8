// The Linux futex on a 32-bit atomic word, for the two sleepers that need a wake-up the moment
// a word changes: the cancel flag (common/cancel.h, within a process) and the control
// doorbells (transport/doorbell.h, across the processes of a node, in shared memory).
#pragma once

#include <atomic>
#include <cstdint>

#include "common/cancel.h"

namespace dsi {

enum class FutexScope { kProcess, kShared };

// Sets the calling thread's timer slack to 1 ns, once per thread: the kernel's default 50 us
// would stretch every short timed sleep. futex_wait does it itself.
void fine_timer_slack();

// Sleeps while *word == expected, until woken, `deadline` passes or a signal arrives (callers
// re-check their condition). Returns at once if *word != expected.
void futex_wait(const std::atomic<uint32_t>& word, uint32_t expected, Clock::time_point deadline,
                FutexScope scope);
// Wakes every thread in futex_wait on `word`.
void futex_wake_all(const std::atomic<uint32_t>& word, FutexScope scope);

}  // namespace dsi
