// Conformance checks every DataChannel implementation must pass, run between a sender and a
// receiver (threads over the loopback, ranks over MPI). Each returns a list of failures.
#pragma once

#include <fmt/format.h>

#include <string>
#include <thread>
#include <vector>

#include "transport/mpi_data_channel.h"

namespace dsi::conformance {

inline std::vector<uint8_t> pattern(size_t n, uint64_t salt) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>((i * 131 + salt * 7) >> 3);
  return v;
}

inline const std::vector<size_t>& sizes() {
  static const std::vector<size_t> s = {0, 1, 7, 4096, 65537, 1 << 20, 16 << 20};
  return s;
}
constexpr int kMany = 2000;

// The sender's part: sizes, then many small transfers, all sent before any is received.
inline void send_all(DataChannel& ch, int dst) {
  for (size_t i = 0; i < sizes().size(); ++i) {
    ch.send(dst, DataKey{1, DataKind::kTest, 1, static_cast<int64_t>(i)}, pattern(sizes()[i], i));
  }
  for (int i = 0; i < kMany; ++i) {
    ch.send(dst, DataKey{1, DataKind::kTest, 2, i}, pattern(64, 1000 + i));
  }
}

// The receiver's part. Receives in an order unrelated to the sending order.
inline std::vector<std::string> receive_all(DataChannel& ch) {
  std::vector<std::string> fails;
  const auto deadline = Clock::now() + std::chrono::seconds(30);
  std::vector<uint8_t> got;
  for (int i = kMany - 1; i >= 0; --i) {  // reverse order
    if (!ch.recv(DataKey{1, DataKind::kTest, 2, i}, got, deadline) ||
        got != pattern(64, 1000 + i)) {
      fails.push_back(fmt::format("small transfer {} missing or damaged", i));
      break;
    }
  }
  for (size_t i = sizes().size(); i-- > 0;) {
    if (!ch.recv(DataKey{1, DataKind::kTest, 1, static_cast<int64_t>(i)}, got, deadline) ||
        got != pattern(sizes()[i], i)) {
      fails.push_back(fmt::format("transfer of {} bytes missing or damaged", sizes()[i]));
    }
  }
  // A received transfer stays available until discarded; then it is gone.
  if (!ch.recv(DataKey{1, DataKind::kTest, 2, 5}, got, deadline))
    fails.push_back("second read failed");
  ch.discard([](const DataKey& k) { return k.stream == 2; });
  if (ch.recv(DataKey{1, DataKind::kTest, 2, 5}, got,
              Clock::now() + std::chrono::milliseconds(20))) {
    fails.push_back("discarded transfer still readable");
  }
  // Waiting for a transfer that never comes: the deadline, and a cancel raised meanwhile.
  auto t0 = Clock::now();
  if (ch.recv(DataKey{9, DataKind::kTest, 9, 9}, got, t0 + std::chrono::milliseconds(50))) {
    fails.push_back("recv of a key never sent succeeded");
  }
  if (Clock::now() - t0 > std::chrono::milliseconds(500)) fails.push_back("deadline overrun");
  CancelFlag cancel;
  std::thread raiser([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    cancel.cancel();
  });
  t0 = Clock::now();
  const bool r =
      ch.recv(DataKey{9, DataKind::kTest, 9, 9}, got, t0 + std::chrono::seconds(20), &cancel);
  raiser.join();
  if (r) fails.push_back("cancelled recv succeeded");
  if (Clock::now() - t0 > std::chrono::seconds(2))
    fails.push_back("cancel not seen promptly while pending");
  return fails;
}

}  // namespace dsi::conformance
