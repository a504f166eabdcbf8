#include "core/protocol.h"

#include <fmt/format.h>

#include <cstring>

namespace dsi {
namespace {

// Header layout, 56 bytes, little-endian (x86-64 and aarch64 hosts are both little-endian;
// a big-endian host would need byte swaps here and nowhere else).
struct Header {
  uint32_t magic;
  uint16_t version;
  uint16_t type;
  uint32_t run;
  int32_t a;
  uint64_t id;
  int32_t b;
  int32_t c;
  uint64_t aux;
  double x;
  uint32_t n_tokens;
  uint32_t n_text;
};
static_assert(sizeof(Header) == 56);

constexpr uint16_t kMaxType = static_cast<uint16_t>(MsgType::kKvExpect);

}  // namespace

const char* msg_type_name(MsgType t) {
  switch (t) {
    case MsgType::kConfigure: return "Configure";
    case MsgType::kReady: return "Ready";
    case MsgType::kPrefill: return "Prefill";
    case MsgType::kPrefillDone: return "PrefillDone";
    case MsgType::kStartChain: return "StartChain";
    case MsgType::kDraft: return "Draft";
    case MsgType::kVerify: return "Verify";
    case MsgType::kResult: return "Result";
    case MsgType::kCancel: return "Cancel";
    case MsgType::kCancelled: return "Cancelled";
    case MsgType::kHeartbeat: return "Heartbeat";
    case MsgType::kStop: return "Stop";
    case MsgType::kStopped: return "Stopped";
    case MsgType::kExit: return "Exit";
    case MsgType::kError: return "Error";
    case MsgType::kKvSend: return "KvSend";
    case MsgType::kKvExpect: return "KvExpect";
  }
  return "?";
}

std::vector<uint8_t> encode(const Message& m) {
  Header h{kProtocolMagic, kProtocolVersion, static_cast<uint16_t>(m.type), m.run, m.a, m.id,
           m.b, m.c, m.aux, m.x, static_cast<uint32_t>(m.tokens.size()),
           static_cast<uint32_t>(m.text.size())};
  std::vector<uint8_t> out(sizeof(Header) + m.tokens.size() * sizeof(Token) + m.text.size());
  std::memcpy(out.data(), &h, sizeof h);
  // An empty vector's data() may be null, and memcpy from null is undefined even for 0 bytes.
  if (!m.tokens.empty()) {
    std::memcpy(out.data() + sizeof h, m.tokens.data(), m.tokens.size() * sizeof(Token));
  }
  std::memcpy(out.data() + sizeof h + m.tokens.size() * sizeof(Token), m.text.data(),
              m.text.size());
  return out;
}

Message decode(std::span<const uint8_t> bytes) {
  Header h;
  if (bytes.size() < sizeof h) {
    throw ProtocolError(fmt::format("control message of {} bytes is shorter than its header",
                                    bytes.size()));
  }
  std::memcpy(&h, bytes.data(), sizeof h);
  if (h.magic != kProtocolMagic) throw ProtocolError("control message with a bad magic number");
  if (h.version != kProtocolVersion) {
    throw ProtocolError(fmt::format("control message of protocol version {} (this build speaks {})",
                                    h.version, kProtocolVersion));
  }
  if (h.type == 0 || h.type > kMaxType) {
    throw ProtocolError(fmt::format("control message of unknown type {}", h.type));
  }
  const size_t want = sizeof h + static_cast<size_t>(h.n_tokens) * sizeof(Token) + h.n_text;
  if (bytes.size() != want) {
    throw ProtocolError(fmt::format("{} message of {} bytes, its header says {}",
                                    msg_type_name(static_cast<MsgType>(h.type)), bytes.size(),
                                    want));
  }
  Message m;
  m.type = static_cast<MsgType>(h.type);
  m.run = h.run;
  m.id = h.id;
  m.a = h.a;
  m.b = h.b;
  m.c = h.c;
  m.aux = h.aux;
  m.x = h.x;
  m.tokens.resize(h.n_tokens);
  if (h.n_tokens > 0) {
    std::memcpy(m.tokens.data(), bytes.data() + sizeof h, h.n_tokens * sizeof(Token));
  }
  m.text.assign(reinterpret_cast<const char*>(bytes.data()) + sizeof h + h.n_tokens * sizeof(Token),
                h.n_text);
  return m;
}

}  // namespace dsi
