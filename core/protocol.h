// The control-plane wire format (docs/protocol.md is its grammar): one fixed little-endian
// header, then the token ids, then a UTF-8 text. Small, versioned, transport-agnostic; the
// same bytes travel over MPI and the in-process loopback.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/token.h"
#include "transport/control_channel.h"

namespace dsi {

inline constexpr uint32_t kProtocolMagic = 0x31495344;  // "DSI1" read little-endian
inline constexpr uint16_t kProtocolVersion = 2;

enum class MsgType : uint16_t {
  kConfigure = 1,   // C->W  text: JSON worker spec (role, engine); x: clock origin (s)
  kReady = 2,       // W->C  engine built; a: vocab size; b: 1 if it has a data channel;
                    //       x: KV bytes per token (0: no handoff); text: device name
  kPrefill = 3,     // C->W  tokens: prompt prefix to cache
  kPrefillDone = 4, // W->C  a: kv length
  kStartChain = 5,  // C->D  id: chain; tokens: committed sequence; a: draft window (-1 = none);
                    //       b: stop length (draft no position >= b)
  kDraft = 6,       // D->C  id: chain; a: position; b: token
  kVerify = 7,      // C->T  id: task; tokens: sequence S; a: n_logits m; aux: chain;
                    //       b, c: bonus anchor and period (sampling: positions sampled from p)
  kResult = 8,      // T->C  id: task; tokens: target's tokens at positions |S|-m+1 .. |S|;
                    //       x: busy seconds; a: tokens computed (forward length)
  kCancel = 9,      // C->T  id: task to preempt (running or queued)
  kCancelled = 10,  // T->C  id: task; x: busy seconds spent on it before it stopped
  kHeartbeat = 11,  // both  liveness only
  kStop = 12,       // C->W  end of this run: stop work, report
  kStopped = 13,    // W->C  text: JSON {busy_s, spans: [...]} for the summary and the trace
  kExit = 14,       // C->W  leave the worker loop; a: exit code
  kError = 15,      // W->C  text: what failed
  kKvSend = 16,     // C->T  KV handoff source: id: handoff; a, b: token range [begin, end);
                    //       c: destination rank; tokens: the committed sequence up to end
  kKvExpect = 17,   // C->T  KV handoff destination: id, a, b, tokens as KvSend; c: source rank
};

const char* msg_type_name(MsgType t);

struct Message {
  MsgType type = MsgType::kHeartbeat;
  uint32_t run = 0;  // run index within one launch (a bench runs many)
  uint64_t id = 0;
  int32_t a = 0;
  int32_t b = 0;
  int32_t c = 0;
  uint64_t aux = 0;
  double x = 0;
  std::vector<Token> tokens;
  std::string text;
};

std::vector<uint8_t> encode(const Message& m);
Message decode(std::span<const uint8_t> bytes);  // throws ProtocolError

struct Envelope {
  int src = -1;
  Message msg;
};

// The typed side of a ControlChannel: encodes what it sends (heartbeats as liveness traffic),
// decodes what it receives.
class ControlLink {
 public:
  explicit ControlLink(ControlChannel& ch) : ch_(ch) {}
  int rank() const { return ch_.rank(); }
  int size() const { return ch_.size(); }
  void send(int dst, const Message& m) {
    ch_.send(dst, encode(m), m.type == MsgType::kHeartbeat ? Traffic::kLiveness : Traffic::kWork);
  }
  // Throws ProtocolError for a frame that does not decode.
  std::optional<Envelope> recv(Clock::time_point deadline) {
    auto f = ch_.recv(deadline);
    if (!f) return std::nullopt;
    return Envelope{f->src, decode(f->bytes)};
  }

 private:
  ControlChannel& ch_;
};

}  // namespace dsi
