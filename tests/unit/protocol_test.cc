// The control-plane codec (core/protocol.h): every message round-trips with every field set,
// every field list names every member, malformed frames are refused with an error naming the
// problem, and docs/protocol.md holds the text the codec renders.
#include "core/protocol.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <sstream>

namespace dsi {
namespace {

template <class T>
constexpr bool kVector = false;
template <class T>
constexpr bool kVector<std::vector<T>> = true;
template <class T>
constexpr bool kVariant = false;
template <class... T>
constexpr bool kVariant<std::variant<T...>> = true;

// Sets every field the codec lists to a value unlike the one it had (numbers large enough to
// need their full width, non-ASCII text, enums and variants moved to their next value).
struct Filler {
  int n = 0;
  template <class T>
  void operator()(T& f, const char*, const char*) {
    fill(f);
  }
  template <class T>
  void fill(T& f) {
    ++n;
    if constexpr (std::is_same_v<T, bool>) {
      f = !f;
    } else if constexpr (std::is_enum_v<T>) {
      f = static_cast<T>((static_cast<size_t>(f) + 1) % enum_names(T{}).size());
    } else if constexpr (std::is_floating_point_v<T>) {
      f = f + n + 0.25;
    } else if constexpr (std::is_integral_v<T>) {
      f = static_cast<T>(f + (sizeof(T) == 8 ? (T{1} << 40) : T{70000}) + n);
      if constexpr (std::is_signed_v<T>) f = -f;
    } else if constexpr (std::is_same_v<T, std::string>) {
      f = "héllo " + std::to_string(n);
    } else if constexpr (kVector<T>) {
      f.resize(3);
      for (auto& e : f) fill(e);
    } else if constexpr (kVariant<T>) {
      fill_variant(f, (f.index() + 1) % std::variant_size_v<T>,
                   std::make_index_sequence<std::variant_size_v<T>>{});
    } else {
      wire_fields(f, *this);
    }
  }
  template <class V, size_t... I>
  void fill_variant(V& v, size_t i, std::index_sequence<I...>) {
    ((i == I ? (v.template emplace<I>(), fill(std::get<I>(v))) : void()), ...);
  }
};

// Members of an aggregate, counted by how many initializers it accepts.
struct AnyField {
  template <class T>
  operator T() const;
};
template <class T, class... A>
constexpr size_t aggregate_members() {
  if constexpr (requires { T{A{}..., AnyField{}}; }) {
    return aggregate_members<T, A..., AnyField>();
  } else {
    return sizeof...(A);
  }
}
template <class T>
size_t listed_fields() {
  size_t n = 0;
  T t{};
  wire_fields(t, [&](auto&, const char*, const char*) { ++n; });
  return n;
}

template <class T>
void expect_every_member_listed(const char* name) {
  EXPECT_EQ(listed_fields<T>(), aggregate_members<T>()) << name << ": a member the codec skips";
}

TEST(Protocol, EveryMemberIsOnTheWire) {
  expect_every_member_listed<msg::Configure>("Configure");
  expect_every_member_listed<msg::Ready>("Ready");
  expect_every_member_listed<msg::Prefill>("Prefill");
  expect_every_member_listed<msg::PrefillDone>("PrefillDone");
  expect_every_member_listed<msg::StartChain>("StartChain");
  expect_every_member_listed<msg::Draft>("Draft");
  expect_every_member_listed<msg::Verify>("Verify");
  expect_every_member_listed<msg::Result>("Result");
  expect_every_member_listed<msg::Cancel>("Cancel");
  expect_every_member_listed<msg::Cancelled>("Cancelled");
  expect_every_member_listed<msg::Heartbeat>("Heartbeat");
  expect_every_member_listed<msg::Stop>("Stop");
  expect_every_member_listed<msg::Stopped>("Stopped");
  expect_every_member_listed<msg::Exit>("Exit");
  expect_every_member_listed<msg::Error>("Error");
  expect_every_member_listed<msg::KvSend>("KvSend");
  expect_every_member_listed<msg::KvExpect>("KvExpect");
  expect_every_member_listed<msg::DraftTree>("DraftTree");
  expect_every_member_listed<msg::Follow>("Follow");
  expect_every_member_listed<msg::Proposals>("Proposals");
  expect_every_member_listed<WorkerSpec>("WorkerSpec");
  expect_every_member_listed<SyntheticParams>("SyntheticParams");
  expect_every_member_listed<LlamaSpec>("LlamaSpec");
  expect_every_member_listed<SamplingParams>("SamplingParams");
  expect_every_member_listed<KvCounters>("KvCounters");
  expect_every_member_listed<Span>("Span");
}

// One message of every type, every field set (Configure twice: LlamaSpec, then SyntheticParams).
std::vector<Message> filled_messages() {
  std::vector<Message> out;
  [&]<size_t... I>(std::index_sequence<I...>) {
    (([&] {
       Message m{.run = 7, .body = std::variant_alternative_t<I, Message::Body>{}};
       std::visit([](auto& b) { Filler{}.fill(b); }, m.body);
       out.push_back(std::move(m));
     }()),
     ...);
  }
  (std::make_index_sequence<std::variant_size_v<Message::Body>>{});
  Message synthetic = out.front();
  Filler{}.fill(synthetic.as<msg::Configure>().spec.engine);  // to the next alternative
  out.push_back(synthetic);
  return out;
}

TEST(Protocol, EveryMessageRoundTripsWithEveryField) {
  for (const Message& m : filled_messages()) {
    const char* name = msg_type_name(m.type());
    const auto bytes = encode(m);
    const Message r = decode(bytes);
    EXPECT_EQ(r.type(), m.type()) << name;
    EXPECT_EQ(r, m) << name;
    // The fields did change: a field missing from the wire would come back as its default.
    Message blank{.run = m.run};
    blank.body = m.body;
    std::visit([](auto& b) { b = std::decay_t<decltype(b)>{}; }, blank.body);
    if (!m.is<msg::Heartbeat>() && !m.is<msg::Stop>()) {
      EXPECT_NE(blank, m) << name;
    }
  }
  const auto all = filled_messages();
  EXPECT_TRUE(std::holds_alternative<LlamaSpec>(all.front().as<msg::Configure>().spec.engine));
  EXPECT_TRUE(std::holds_alternative<SyntheticParams>(all.back().as<msg::Configure>().spec.engine));
}

std::string error_of(std::span<const uint8_t> bytes) {
  try {
    decode(bytes);
  } catch (const ProtocolError& e) {
    return e.what();
  }
  ADD_FAILURE() << "decoded without an error";
  return "";
}

// The frame with its header's body size made to match `bytes` again.
std::vector<uint8_t> patched(std::vector<uint8_t> bytes) {
  const auto body = static_cast<uint32_t>(bytes.size() - 16);
  std::memcpy(bytes.data() + 12, &body, 4);
  return bytes;
}

#define EXPECT_HAS(text, part) EXPECT_NE((text).find(part), std::string::npos) << (text)

TEST(Protocol, RejectsDamagedFrames) {
  auto bytes = encode(Message{.body = msg::Result{.tokens = {1, 2}}});
  EXPECT_HAS(error_of(std::span(bytes).first(10)), "shorter than its 16-byte header");
  auto longer = bytes;
  longer.push_back(0);
  EXPECT_HAS(error_of(longer), "Result message of 49 bytes, its header says 48");
  EXPECT_HAS(error_of(std::span(bytes).first(bytes.size() - 1)), "of 47 bytes, its header says 48");
  auto bad_magic = bytes;
  bad_magic[0] ^= 1;
  EXPECT_HAS(error_of(bad_magic), "bad magic number");
  auto bad_version = bytes;
  bad_version[4] = 2;
  EXPECT_HAS(error_of(bad_version), "protocol version 2 (this build speaks 10)");
  for (uint8_t t : {0, 21, 200}) {
    auto bad_type = bytes;
    bad_type[6] = t;
    EXPECT_HAS(error_of(bad_type), fmt::format("unknown type {}", t));
  }
}

TEST(Protocol, RejectsBadFieldsByName) {
  // A body cut short inside a field, with a header that agrees: the field is named.
  auto verify = encode(Message{.body = msg::Verify{.task = 3, .seq = {1, 2, 3}, .n_logits = 2}});
  EXPECT_HAS(error_of(patched({verify.begin(), verify.end() - 2})),
             "Verify message: field 'parents' is cut short (4 bytes needed, 2 left)");
  // A token count beyond the frame.
  auto lie = verify;
  const uint32_t huge = 1u << 30;
  std::memcpy(lie.data() + 16 + 16, &huge, 4);  // after task and chain
  EXPECT_HAS(error_of(lie), "field 'seq' is cut short");
  // Bytes after the last field.
  auto trailing = verify;
  trailing.push_back(0);
  EXPECT_HAS(error_of(patched(trailing)), "Verify message has 1 bytes after its last field");
  // A bool that is neither 0 nor 1 (Ready: vocab i32, then has_data_channel).
  auto ready = encode(Message{.body = msg::Ready{.vocab = 5}});
  ready[16 + 4] = 7;
  EXPECT_HAS(error_of(ready), "Ready message: field 'has_data_channel' holds 7, not a bool");
  // An enum and a variant tag out of range (Configure: origin_s f64, then spec.role, then
  // spec.engine's tag).
  auto configure = encode(Message{.body = msg::Configure{}});
  auto bad_role = configure;
  bad_role[16 + 8] = 2;
  EXPECT_HAS(error_of(bad_role), "Configure message: field 'spec.role' holds 2, not a Role (0..1)");
  auto bad_engine = configure;
  bad_engine[16 + 9] = 9;
  EXPECT_HAS(error_of(bad_engine), "field 'spec.engine' holds alternative 9, there are 2");
  // A span count beyond the frame, and a bad enum inside a span.
  msg::Stopped st;
  st.spans.resize(2);
  auto stopped = encode(Message{.body = st});
  const size_t spans_at = 16 + 8 + 8 + 7 * 8;
  auto many = stopped;
  std::memcpy(many.data() + spans_at, &huge, 4);
  EXPECT_HAS(error_of(many), "field 'spans' claims 1073741824 elements");
  auto bad_kind = stopped;
  const size_t span_bytes = (stopped.size() - spans_at - 4) / 2;
  bad_kind[spans_at + 4 + span_bytes] = 6;
  EXPECT_HAS(error_of(bad_kind), "field 'spans[1].kind' holds 6, not a SpanKind");
}

TEST(Protocol, EveryTruncationOfEveryMessageIsRefused) {
  for (const Message& m : filled_messages()) {
    const auto bytes = encode(m);
    for (size_t n = 16; n < bytes.size(); ++n) {
      const auto cut = patched({bytes.begin(), bytes.begin() + n});
      EXPECT_THROW(decode(cut), ProtocolError) << msg_type_name(m.type()) << " cut at " << n;
    }
  }
}

// Heartbeats do not make a channel hot; a deferred message does not wake its receiver.
TEST(Protocol, TrafficKinds) {
  struct Recorder : ControlChannel {
    std::vector<Traffic> sent;
    int rank() const override { return 0; }
    int size() const override { return 2; }
    void send(int, std::vector<uint8_t>, Traffic t) override { sent.push_back(t); }
    std::optional<Frame> recv(Clock::time_point) override { return std::nullopt; }
  } ch;
  ControlLink link(ch);
  link.send(1, Message{.body = msg::Heartbeat{}});
  link.send(1, Message{.body = msg::Stop{}});
  link.send(1, Message{.body = msg::Draft{}}, /*defer=*/true);
  EXPECT_EQ(ch.sent,
            (std::vector<Traffic>{Traffic::kLiveness, Traffic::kWork, Traffic::kDeferred}));
}

// docs/protocol.md holds protocol_doc() verbatim between its markers. To regenerate it:
//   build/tests/protocol_doc --write docs/protocol.md
TEST(ProtocolDoc, DocsHoldWhatTheCodecRenders) {
  const std::string path = std::string(DSI_SOURCE_DIR) + "/docs/protocol.md";
  std::ifstream f(path);
  ASSERT_TRUE(f) << "cannot read " << path;
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string doc = ss.str();
  const std::string begin = "<!-- generated: begin -->\n", end = "<!-- generated: end -->";
  const size_t b = doc.find(begin), e = doc.find(end);
  ASSERT_NE(b, std::string::npos) << path << " lacks the marker " << begin;
  ASSERT_NE(e, std::string::npos) << path << " lacks the marker " << end;
  EXPECT_EQ(doc.substr(b + begin.size(), e - b - begin.size()), protocol_doc())
      << path << " differs from the codec; regenerate it with "
      << "build/tests/protocol_doc --write docs/protocol.md";
}

TEST(ProtocolDoc, RendersEveryMessageAndType) {
  const std::string doc = protocol_doc();
  for (uint16_t t = 1; t <= 17; ++t) {
    EXPECT_HAS(doc, fmt::format("\n### {} {}\n", t, msg_type_name(static_cast<MsgType>(t))));
  }
  for (const char* type :
       {"WorkerSpec", "SyntheticParams", "LlamaSpec", "SamplingParams", "KvCounters", "Span",
        "Role", "LlamaDevice", "CudaDtype", "SpanKind", "KvOutcome"}) {
    EXPECT_HAS(doc, fmt::format("\n### {}\n", type));
  }
  EXPECT_HAS(doc, "Protocol version 10.");
  EXPECT_HAS(doc, "| seq | i32[] | the whole sequence S = committed + drafts |");
  EXPECT_HAS(doc, "| engine | one of: 0 SyntheticParams, 1 LlamaSpec |");
  EXPECT_HAS(doc, "u8, what a worker rank does: 0 `drafter`, 1 `target`.");
}

}  // namespace
}  // namespace dsi
