#include <gtest/gtest.h>

#include "../data_channel_conformance.h"

namespace dsi {
namespace {

TEST(DataChannel, LoopbackConformance) {
  LoopbackDataHub hub(2);
  auto a = hub.channel(0), b = hub.channel(1);
  std::thread sender([&] { conformance::send_all(*a, 1); });
  const auto fails = conformance::receive_all(*b);
  sender.join();
  for (const auto& f : fails) ADD_FAILURE() << f;
}

}  // namespace
}  // namespace dsi
