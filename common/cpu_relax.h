// cpu_relax(): the body of a spin-wait loop. On x86 it is PAUSE, which tells the core that it
// spins (it yields the pipeline to a sibling hyperthread and avoids a memory-order flush when
// the loop ends); elsewhere it yields the thread.
#pragma once

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#else
#include <thread>
#endif

namespace dsi {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

}  // namespace dsi
