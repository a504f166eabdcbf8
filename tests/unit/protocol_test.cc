#include "core/protocol.h"

#include <gtest/gtest.h>

namespace dsi {
namespace {

TEST(Protocol, RoundTripsEveryField) {
  Message m{.type = MsgType::kVerify, .run = 7, .id = 1ULL << 40, .a = -3, .b = 9, .c = -11,
            .aux = 1ULL << 50, .x = 0.25,
            .tokens = {1, 2, 3, 70000}, .text = "héllo"};
  Message r = decode(encode(m));
  EXPECT_EQ(r.type, m.type);
  EXPECT_EQ(r.run, m.run);
  EXPECT_EQ(r.id, m.id);
  EXPECT_EQ(r.a, m.a);
  EXPECT_EQ(r.b, m.b);
  EXPECT_EQ(r.c, m.c);
  EXPECT_EQ(r.aux, m.aux);
  EXPECT_EQ(r.x, m.x);
  EXPECT_EQ(r.tokens, m.tokens);
  EXPECT_EQ(r.text, m.text);
}

TEST(Protocol, RejectsDamagedMessages) {
  auto bytes = encode(Message{.type = MsgType::kResult, .tokens = {1, 2}});
  EXPECT_THROW(decode(std::span(bytes).first(10)), ProtocolError);
  auto longer = bytes;
  longer.push_back(0);
  EXPECT_THROW(decode(longer), ProtocolError);
  auto bad_magic = bytes;
  bad_magic[0] ^= 1;
  EXPECT_THROW(decode(bad_magic), ProtocolError);
  auto bad_version = bytes;
  bad_version[4] = 99;
  EXPECT_THROW(decode(bad_version), ProtocolError);
  auto bad_type = bytes;
  bad_type[6] = 200;
  EXPECT_THROW(decode(bad_type), ProtocolError);
}

}  // namespace
}  // namespace dsi
