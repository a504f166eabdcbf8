// The control-plane messages and their one codec. Every message is a struct with named fields;
// a Message holds exactly one of them plus the run it belongs to. The wire format (a fixed
// header, then the fields in the order wire_fields lists them) is versioned: docs/protocol.md
// states it and is checked against protocol_doc(), which renders the same field lists.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

#include "common/error.h"
#include "common/token.h"
#include "core/spans.h"
#include "core/wire.h"
#include "core/worker_spec.h"
#include "transport/control_channel.h"

namespace dsi {

inline constexpr uint32_t kProtocolMagic = 0x31495344;  // "DSI1" read little-endian
// 3: typed messages, each field encoded in its own width; the worker spec and the Stopped
// report are binary structs (were JSON text).
// 8: token trees (StartChain.tree, DraftTree, Verify.parents).
// 9: DSI with token trees: a DSI chain's drafter replies DraftTree after DraftTree, each below
// the last one's first path; WorkerSpec.stage_tokens (staged drafting).
// 10: merged drafters: Follow (the lead drafter's drafts to the other drafters), Proposals
// (their tokens along the lead's chain); WorkerSpec.drafter_index and .followers,
// SyntheticParams.stream.
inline constexpr uint16_t kProtocolVersion = 10;

// The type id on the wire; each is the index of its struct in Message::Body plus one.
enum class MsgType : uint16_t {
  kConfigure = 1,
  kReady,
  kPrefill,
  kPrefillDone,
  kStartChain,
  kDraft,
  kVerify,
  kResult,
  kCancel,
  kCancelled,
  kHeartbeat,
  kStop,
  kStopped,
  kExit,
  kError,
  kKvSend,
  kKvExpect,
  kDraftTree,
  kFollow,
  kProposals,
};

// KV handoff counters of one worker in one run.
struct KvCounters {
  int64_t sent = 0;
  int64_t sent_bytes = 0;
  int64_t imported = 0;
  int64_t imported_tokens = 0;
  int64_t fallbacks = 0;
  int64_t not_needed = 0;
  int64_t verified_on_imported = 0;
  bool operator==(const KvCounters&) const = default;
};
constexpr WireInfo wire_info(const KvCounters*) {
  return {"KvCounters", "a worker's KV handoff counters for one run"};
}
template <Is<KvCounters> S, class V>
void wire_fields(S& s, V&& v) {
  v(s.sent, "sent", "ranges sent");
  v(s.sent_bytes, "sent_bytes", "bytes sent");
  v(s.imported, "imported", "ranges imported");
  v(s.imported_tokens, "imported_tokens", "tokens imported");
  v(s.fallbacks, "fallbacks", "imports given up (the next forward recomputes)");
  v(s.not_needed, "not_needed", "imports the cache had computed meanwhile");
  v(s.verified_on_imported, "verified_on_imported", "verifications that attended to imported KV");
}

// The messages, one struct each (msg::Cancelled is the message, dsi::Cancelled the exception
// of a cancelled forward). C: the coordinator (rank 0); W: any worker; D: the drafter; T: a
// target.
namespace msg {

struct Configure {
  static constexpr MsgType kType = MsgType::kConfigure;
  static constexpr const char* kDir = "C→W";
  static constexpr const char* kDoc =
      "Start a run: build (or keep) the engine the spec describes, forget the drafter's chain.";
  double origin_s = 0;  // the run's clock origin (s, steady clock), for span timestamps
  WorkerSpec spec;
  bool operator==(const Configure&) const = default;
};
template <Is<Configure> S, class V>
void wire_fields(S& s, V&& v) {
  v(s.origin_s, "origin_s", "the run's clock origin (s, steady clock) for span timestamps");
  v(s.spec, "spec", "what to build and serve");
}

struct Ready {
  static constexpr MsgType kType = MsgType::kReady;
  static constexpr const char* kDir = "W→C";
  static constexpr const char* kDoc = "The engine is built.";
  int32_t vocab = 0;
  bool has_data_channel = false;
  uint64_t kv_bytes_per_token = 0;  // 0: the engine cannot hand KV over
  std::string device;               // cpu@HOST, cuda:BUS_ID@HOST
  bool operator==(const Ready&) const = default;
};
template <Is<Ready> S, class V>
void wire_fields(S& s, V&& v) {
  v(s.vocab, "vocab", "vocabulary size of the engine's output");
  v(s.has_data_channel, "has_data_channel", "the worker has a data channel (KV handoff, sampling)");
  v(s.kv_bytes_per_token, "kv_bytes_per_token",
    "KV bytes per token; 0: the engine cannot hand KV over");
  v(s.device, "device", "the device it computes on (`cpu@HOST`, `cuda:BUS_ID@HOST`)");
}

struct Prefill {
  static constexpr MsgType kType = MsgType::kPrefill;
  static constexpr const char* kDir = "C→W";
  static constexpr const char* kDoc = "Cache the prompt's KV (the prompt without its last token).";
  std::vector<Token> tokens;
  bool operator==(const Prefill&) const = default;
};
template <Is<Prefill> S, class V>
void wire_fields(S& s, V&& v) {
  v(s.tokens, "tokens", "the prefix to cache");
}

struct PrefillDone {
  static constexpr MsgType kType = MsgType::kPrefillDone;
  static constexpr const char* kDir = "W→C";
  static constexpr const char* kDoc = "The prefix is cached.";
  int32_t kv_len = 0;
  bool operator==(const PrefillDone&) const = default;
};
template <Is<PrefillDone> S, class V>
void wire_fields(S& s, V&& v) {
  v(s.kv_len, "kv_len", "tokens in the engine's KV cache");
}

struct StartChain {
  static constexpr MsgType kType = MsgType::kStartChain;
  static constexpr const char* kDir = "C→D";
  static constexpr const char* kDoc =
      "Draft a new chain from the committed sequence; supersedes the drafter's forward in "
      "progress.";
  uint64_t chain = 0;
  std::vector<Token> committed;
  int32_t window = -1;        // drafts to make (-1: unlimited; SI: k)
  int32_t stop_len = 0;       // draft no position >= stop_len
  int32_t notify_every = 1;   // wake the coordinator for every n-th draft only (0, 1: each)
  std::vector<int32_t> tree;  // token trees: the branching factor per depth
  bool operator==(const StartChain&) const = default;
};
template <Is<StartChain> S, class V>
void wire_fields(S& s, V&& v) {
  v(s.chain, "chain", "the chain's id");
  v(s.committed, "committed", "the committed sequence");
  v(s.window, "window", "drafts to make (-1: unlimited; SI: k)");
  v(s.stop_len, "stop_len", "no draft at a position ≥ stop_len");
  v(s.notify_every, "notify_every",
    "drafts n·notify_every of the chain (and its last) wake the coordinator; the others are "
    "deferred (read with the next)");
  v(s.tree, "tree",
    "token trees: draft trees of this shape (branching factor per depth) and reply DraftTree "
    "(one with a window, SI; tree after tree without, DSI); empty: a chain of Draft messages");
}

struct Draft {
  static constexpr MsgType kType = MsgType::kDraft;
  static constexpr const char* kDir = "D→C";
  static constexpr const char* kDoc = "One draft token of a chain.";
  uint64_t chain = 0;
  int32_t pos = 0;
  Token token = 0;
  float busy_s = 0;
  bool operator==(const Draft&) const = default;
};
template <Is<Draft> S, class V>
void wire_fields(S& s, V&& v) {
  v(s.chain, "chain", "the chain it extends");
  v(s.pos, "pos", "its position in the sequence");
  v(s.token, "token", "the drafted token");
  v(s.busy_s, "busy_s", "seconds its forward took (the adaptive policy's drafter cost)");
}

struct Verify {
  static constexpr MsgType kType = MsgType::kVerify;
  static constexpr const char* kDir = "C→T";
  static constexpr const char* kDoc =
      "Verify the last n_logits - 1 tokens of seq (the drafts) and give the token after them.";
  uint64_t task = 0;
  uint64_t chain = 0;
  std::vector<Token> seq;  // committed + drafts
  int32_t n_logits = 0;    // m = drafts + 1 positions to check
  int32_t bonus_anchor = -1;
  int32_t bonus_period = 0;
  std::vector<int32_t> parents;  // token tree: the parent of each of seq's last nodes
  bool operator==(const Verify&) const = default;
};
template <Is<Verify> S, class V>
void wire_fields(S& s, V&& v) {
  v(s.task, "task", "the task's id");
  v(s.chain, "chain", "the chain the drafts belong to (sampling: where their probabilities are)");
  v(s.seq, "seq", "the whole sequence S = committed + drafts");
  v(s.n_logits, "n_logits", "m = drafts + 1 positions to check");
  v(s.bonus_anchor, "bonus_anchor",
    "sampling: positions anchor + i·period are the target's own samples");
  v(s.bonus_period, "bonus_period", "0: only the last position (docs/sampling.md)");
  v(s.parents, "parents",
    "token tree: the last parents.size() tokens of seq are a tree's nodes, each following the "
    "node parents[i] (-1: the committed sequence); empty: the drafts are a chain");
}

struct Result {
  static constexpr MsgType kType = MsgType::kResult;
  static constexpr const char* kDir = "T→C";
  static constexpr const char* kDoc = "The outcome of a verification.";
  uint64_t task = 0;
  std::vector<Token> tokens;  // the target's tokens at positions |S|-m+1 .. |S|
  int32_t computed = 0;       // tokens in the forward
  double busy_s = 0;
  bool operator==(const Result&) const = default;
};
template <Is<Result> S, class V>
void wire_fields(S& s, V&& v) {
  v(s.task, "task", "the task's id");
  v(s.tokens, "tokens",
    "the target's tokens at positions |S|−m+1 … |S|; a tree: the accepted path's tokens, then "
    "the target's token after it");
  v(s.computed, "computed", "tokens the forward computed (the rest came from the cache)");
  v(s.busy_s, "busy_s", "seconds the verification took");
}

struct Cancel {
  static constexpr MsgType kType = MsgType::kCancel;
  static constexpr const char* kDir = "C→T";
  static constexpr const char* kDoc =
      "Preempt a task: running (its cancel flag is raised at once, seen between layers or sleep "
      "slices) or queued.";
  uint64_t task = 0;
  bool operator==(const Cancel&) const = default;
};
template <Is<Cancel> S, class V>
void wire_fields(S& s, V&& v) {
  v(s.task, "task", "the task to preempt");
}

struct Cancelled {
  static constexpr MsgType kType = MsgType::kCancelled;
  static constexpr const char* kDir = "T→C";
  static constexpr const char* kDoc = "A task stopped before it finished.";
  uint64_t task = 0;
  double busy_s = 0;
  bool operator==(const Cancelled&) const = default;
};
template <Is<Cancelled> S, class V>
void wire_fields(S& s, V&& v) {
  v(s.task, "task", "the task");
  v(s.busy_s, "busy_s", "seconds spent on it before it stopped (0: it was still queued)");
}

struct Heartbeat {
  static constexpr MsgType kType = MsgType::kHeartbeat;
  static constexpr const char* kDir = "both";
  static constexpr const char* kDoc = "Liveness, every `runtime.heartbeat_ms`.";
  bool operator==(const Heartbeat&) const = default;
};
template <Is<Heartbeat> S, class V>
void wire_fields(S&, V&&) {}

struct Stop {
  static constexpr MsgType kType = MsgType::kStop;
  static constexpr const char* kDir = "C→W";
  static constexpr const char* kDoc = "End of the run: stop work and report.";
  bool operator==(const Stop&) const = default;
};
template <Is<Stop> S, class V>
void wire_fields(S&, V&&) {}

struct Stopped {
  static constexpr MsgType kType = MsgType::kStopped;
  static constexpr const char* kDir = "W→C";
  static constexpr const char* kDoc = "The worker's report of the run.";
  double busy_s = 0;
  double wasted_s = 0;  // of busy_s, on verifications that were preempted
  KvCounters kv;
  std::vector<Span> spans;
  bool operator==(const Stopped&) const = default;
};
template <Is<Stopped> S, class V>
void wire_fields(S& s, V&& v) {
  v(s.busy_s, "busy_s", "seconds spent computing");
  v(s.wasted_s, "wasted_s", "of which on verifications that were preempted");
  v(s.kv, "kv", "KV handoff counters");
  v(s.spans, "spans", "the trace, in time order");
}

struct Exit {
  static constexpr MsgType kType = MsgType::kExit;
  static constexpr const char* kDir = "C→W";
  static constexpr const char* kDoc = "Leave the worker loop.";
  int32_t code = 0;
  bool operator==(const Exit&) const = default;
};
template <Is<Exit> S, class V>
void wire_fields(S& s, V&& v) {
  v(s.code, "code", "the exit code");
}

struct Error {
  static constexpr MsgType kType = MsgType::kError;
  static constexpr const char* kDir = "W→C";
  static constexpr const char* kDoc =
      "A request failed; the coordinator names the rank and ends the job.";
  std::string what;
  bool operator==(const Error&) const = default;
};
template <Is<Error> S, class V>
void wire_fields(S& s, V&& v) {
  v(s.what, "what", "what failed (engine build, a bad request)");
}

struct KvSend {
  static constexpr MsgType kType = MsgType::kKvSend;
  static constexpr const char* kDir = "C→T";
  static constexpr const char* kDoc =
      "KV handoff source: send the KV of [begin, end) if the cache holds it for exactly these "
      "tokens. Served ahead of queued work.";
  uint64_t handoff = 0;
  int32_t begin = 0;
  int32_t end = 0;
  int32_t dst = 0;
  std::vector<Token> tokens;  // the committed sequence up to end
  bool operator==(const KvSend&) const = default;
};
template <Is<KvSend> S, class V>
void wire_fields(S& s, V&& v) {
  v(s.handoff, "handoff", "the handoff's number (rising within a run)");
  v(s.begin, "begin", "first token of the range");
  v(s.end, "end", "end of the range (exclusive)");
  v(s.dst, "dst", "destination rank");
  v(s.tokens, "tokens", "the committed sequence up to end");
}

struct KvExpect {
  static constexpr MsgType kType = MsgType::kKvExpect;
  static constexpr const char* kDir = "C→T";
  static constexpr const char* kDoc =
      "KV handoff destination: import the KV of [begin, end) when the cache reaches begin with "
      "the same tokens; otherwise the next forward recomputes.";
  uint64_t handoff = 0;
  int32_t begin = 0;
  int32_t end = 0;
  int32_t src = 0;
  std::vector<Token> tokens;
  bool operator==(const KvExpect&) const = default;
};
template <Is<KvExpect> S, class V>
void wire_fields(S& s, V&& v) {
  v(s.handoff, "handoff", "as KvSend");
  v(s.begin, "begin", "first token of the range");
  v(s.end, "end", "end of the range (exclusive)");
  v(s.src, "src", "source rank");
  v(s.tokens, "tokens", "the committed sequence up to end");
}

struct DraftTree {
  static constexpr MsgType kType = MsgType::kDraftTree;
  static constexpr const char* kDir = "D→C";
  static constexpr const char* kDoc =
      "A token tree of the shape a chain's StartChain.tree asked for, drafted from pos. SI: one "
      "per chain. DSI: one after another, each below the last one's first path (the first "
      "child of each node), which is the chain's drafts.";
  uint64_t chain = 0;
  int32_t pos = 0;
  std::vector<Token> tokens;
  std::vector<int32_t> parents;
  float busy_s = 0;
  bool operator==(const DraftTree&) const = default;
};
template <Is<DraftTree> S, class V>
void wire_fields(S& s, V&& v) {
  v(s.chain, "chain", "the chain it drafts for");
  v(s.pos, "pos", "the position of its depth-0 nodes (the committed sequence's length)");
  v(s.tokens, "tokens", "its nodes' tokens, level by level");
  v(s.parents, "parents", "each node's parent (-1: the committed sequence), an earlier node");
  v(s.busy_s, "busy_s", "seconds its forwards took");
}

struct Follow {
  static constexpr MsgType kType = MsgType::kFollow;
  static constexpr const char* kDir = "D→D";
  static constexpr const char* kDoc =
      "Merged drafters: the lead drafter's drafts of a chain, sent to every other drafter as they "
      "are made (with roles.drafters > 1).";
  uint64_t chain = 0;
  int32_t pos = 0;
  std::vector<Token> tokens;
  bool operator==(const Follow&) const = default;
};
template <Is<Follow> S, class V>
void wire_fields(S& s, V&& v) {
  v(s.chain, "chain", "the chain they extend");
  v(s.pos, "pos", "the position of the first");
  v(s.tokens, "tokens", "the lead drafter's drafts from pos on");
}

struct Proposals {
  static constexpr MsgType kType = MsgType::kProposals;
  static constexpr const char* kDir = "D→C";
  static constexpr const char* kDoc =
      "Merged drafters: a drafter other than the lead proposes its own token at positions of the "
      "lead's chain, each after the committed text and the lead's drafts before it; where one "
      "differs from the lead's draft it becomes a sibling in the token tree verified.";
  uint64_t chain = 0;
  int32_t pos = 0;
  std::vector<Token> tokens;
  float busy_s = 0;
  bool operator==(const Proposals&) const = default;
};
template <Is<Proposals> S, class V>
void wire_fields(S& s, V&& v) {
  v(s.chain, "chain", "the chain they are for");
  v(s.pos, "pos", "the position of the first");
  v(s.tokens, "tokens", "its tokens at positions pos, pos + 1, ...");
  v(s.busy_s, "busy_s", "seconds its forward took");
}

}  // namespace msg

struct Message {
  // In MsgType order.
  using Body =
      std::variant<msg::Configure, msg::Ready, msg::Prefill, msg::PrefillDone, msg::StartChain,
                   msg::Draft, msg::Verify, msg::Result, msg::Cancel, msg::Cancelled,
                   msg::Heartbeat, msg::Stop, msg::Stopped, msg::Exit, msg::Error, msg::KvSend,
                   msg::KvExpect, msg::DraftTree, msg::Follow, msg::Proposals>;
  uint32_t run = 0;  // run index within one launch (a bench runs many)
  Body body;

  MsgType type() const { return static_cast<MsgType>(body.index() + 1); }
  template <class T>
  bool is() const {
    return std::holds_alternative<T>(body);
  }
  template <class T>
  const T& as() const {
    return std::get<T>(body);
  }
  template <class T>
  T& as() {
    return std::get<T>(body);
  }
  bool operator==(const Message&) const = default;
};

const char* msg_type_name(MsgType t);

std::vector<uint8_t> encode(const Message& m);
// Throws ProtocolError naming the problem: a short or long frame, a bad magic number, another
// version, an unknown type, a field cut short, a bad bool, enum or variant tag, trailing bytes.
Message decode(std::span<const uint8_t> bytes);

// The markdown that docs/protocol.md holds between its "generated" markers: the header, every
// message with its fields (wire order, types, meaning) and the types they use.
std::string protocol_doc();

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
  // `defer`: the receiver need not wake for it (Traffic::kDeferred).
  void send(int dst, const Message& m, bool defer = false) {
    ch_.send(dst, encode(m),
             m.is<msg::Heartbeat>() ? Traffic::kLiveness
             : defer                ? Traffic::kDeferred
                                    : Traffic::kWork);
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
