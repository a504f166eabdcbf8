// The codec of core/protocol.h. Encoding, decoding and the rendered documentation all walk the
// same field lists (wire_fields), so they cannot disagree.
#include "core/protocol.h"

#include <fmt/format.h>

#include <bit>
#include <cstring>
#include <set>

namespace dsi {
namespace {

// x86-64 and aarch64 hosts are little-endian; a big-endian host would need byte swaps in
// Writer::raw and Reader::raw and nowhere else.
static_assert(std::endian::native == std::endian::little);

struct Header {
  uint32_t magic;
  uint16_t version;
  uint16_t type;
  uint32_t run;
  uint32_t body_bytes;  // what follows the header
};
static_assert(sizeof(Header) == 16);

using Body = Message::Body;
constexpr size_t kTypes = std::variant_size_v<Body>;

template <size_t... I>
constexpr bool ids_follow_body_order(std::index_sequence<I...>) {
  return ((std::variant_alternative_t<I, Body>::kType == static_cast<MsgType>(I + 1)) && ...);
}
static_assert(ids_follow_body_order(std::make_index_sequence<kTypes>{}));

template <class T>
constexpr bool kIsVector = false;
template <class T>
constexpr bool kIsVector<std::vector<T>> = true;
template <class T>
constexpr bool kIsVariant = false;
template <class... T>
constexpr bool kIsVariant<std::variant<T...>> = true;

// Fixed-width numbers (not bool): copied as they are in memory.
template <class T>
constexpr bool kIsNumber = std::is_arithmetic_v<T> && !std::is_same_v<T, bool>;

template <class V, size_t... I>
void emplace_alternative(V& v, size_t i, std::index_sequence<I...>) {
  ((i == I ? (void)v.template emplace<I>() : void()), ...);
}

class Writer {
 public:
  std::vector<uint8_t> out;
  template <class T>
  void raw(const T& v) {
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    out.insert(out.end(), p, p + sizeof v);
  }
  void bytes(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    out.insert(out.end(), b, b + n);
  }
};

template <class T>
void put(Writer& w, const T& v) {
  if constexpr (std::is_same_v<T, bool>) {
    w.raw(uint8_t{v ? uint8_t{1} : uint8_t{0}});
  } else if constexpr (std::is_enum_v<T>) {
    w.raw(static_cast<uint8_t>(v));
  } else if constexpr (kIsNumber<T>) {
    w.raw(v);
  } else if constexpr (std::is_same_v<T, std::string>) {
    w.raw(static_cast<uint32_t>(v.size()));
    w.bytes(v.data(), v.size());
  } else if constexpr (kIsVector<T>) {
    w.raw(static_cast<uint32_t>(v.size()));
    if constexpr (kIsNumber<typename T::value_type>) {
      w.bytes(v.data(), v.size() * sizeof(typename T::value_type));
    } else {
      for (const auto& e : v) put(w, e);
    }
  } else if constexpr (kIsVariant<T>) {
    w.raw(static_cast<uint8_t>(v.index()));
    std::visit([&](const auto& a) { put(w, a); }, v);
  } else {
    wire_fields(v, [&](const auto& f, const char*, const char*) { put(w, f); });
  }
}

class Reader {
 public:
  Reader(std::span<const uint8_t> b, const char* msg) : b_(b), msg_(msg) {}
  size_t left() const { return b_.size() - pos_; }
  std::vector<std::string> path;  // the field being read, for messages

  [[noreturn]] void fail(const std::string& what) const {
    std::string where;
    for (const auto& p : path) where += (where.empty() || p[0] == '[' ? "" : ".") + p;
    throw ProtocolError(fmt::format("{} message: field '{}' {}", msg_, where, what));
  }
  void need(size_t n) const {
    if (left() < n) fail(fmt::format("is cut short ({} bytes needed, {} left)", n, left()));
  }
  template <class T>
  T raw() {
    need(sizeof(T));
    T v;
    std::memcpy(&v, b_.data() + pos_, sizeof v);
    pos_ += sizeof v;
    return v;
  }
  void bytes(void* p, size_t n) {
    need(n);
    if (n) std::memcpy(p, b_.data() + pos_, n);
    pos_ += n;
  }

 private:
  std::span<const uint8_t> b_;
  size_t pos_ = 0;
  const char* msg_;
};

template <class T>
void get(Reader& r, T& v) {
  if constexpr (std::is_same_v<T, bool>) {
    const auto b = r.raw<uint8_t>();
    if (b > 1) r.fail(fmt::format("holds {}, not a bool (0 or 1)", b));
    v = b == 1;
  } else if constexpr (std::is_enum_v<T>) {
    const auto b = r.raw<uint8_t>();
    const size_t n = enum_names(T{}).size();
    if (b >= n) {
      r.fail(fmt::format("holds {}, not a {} (0..{})", b, wire_info(static_cast<T*>(nullptr)).name,
                         n - 1));
    }
    v = static_cast<T>(b);
  } else if constexpr (kIsNumber<T>) {
    v = r.raw<T>();
  } else if constexpr (std::is_same_v<T, std::string>) {
    const auto n = r.raw<uint32_t>();
    r.need(n);
    v.resize(n);
    r.bytes(v.data(), n);
  } else if constexpr (kIsVector<T>) {
    using E = typename T::value_type;
    const auto n = r.raw<uint32_t>();
    if constexpr (kIsNumber<E>) {
      r.need(static_cast<size_t>(n) * sizeof(E));
      v.resize(n);
      r.bytes(v.data(), n * sizeof(E));
    } else {
      // Every element takes at least one byte: a count beyond what is left is a lie.
      if (n > r.left()) r.fail(fmt::format("claims {} elements, {} bytes are left", n, r.left()));
      v.resize(n);
      for (uint32_t i = 0; i < n; ++i) {
        r.path.push_back(fmt::format("[{}]", i));
        get(r, v[i]);
        r.path.pop_back();
      }
    }
  } else if constexpr (kIsVariant<T>) {
    const auto tag = r.raw<uint8_t>();
    if (tag >= std::variant_size_v<T>) {
      r.fail(fmt::format("holds alternative {}, there are {}", tag, std::variant_size_v<T>));
    }
    emplace_alternative(v, tag, std::make_index_sequence<std::variant_size_v<T>>{});
    std::visit([&](auto& a) { get(r, a); }, v);
  } else {
    wire_fields(v, [&](auto& f, const char* name, const char*) {
      r.path.push_back(name);
      get(r, f);
      r.path.pop_back();
    });
  }
}

// --- documentation -------------------------------------------------------------------------

std::string cell(std::string s) {
  std::string out;
  for (char ch : s) {
    if (ch == '|') out += '\\';
    out += ch;
  }
  return out;
}

// The types a message uses, each documented once, in order of first use.
class DocTypes {
 public:
  template <class T>
  std::string name() {
    if constexpr (std::is_same_v<T, bool>) {
      return "bool";
    } else if constexpr (std::is_same_v<T, int32_t>) {
      return "i32";
    } else if constexpr (std::is_same_v<T, uint32_t>) {
      return "u32";
    } else if constexpr (std::is_same_v<T, int64_t>) {
      return "i64";
    } else if constexpr (std::is_same_v<T, uint64_t>) {
      return "u64";
    } else if constexpr (std::is_same_v<T, float>) {
      return "f32";
    } else if constexpr (std::is_same_v<T, double>) {
      return "f64";
    } else if constexpr (std::is_same_v<T, std::string>) {
      return "string";
    } else if constexpr (kIsVector<T>) {
      return name<typename T::value_type>() + "[]";
    } else if constexpr (kIsVariant<T>) {
      return variant_name<T>(std::make_index_sequence<std::variant_size_v<T>>{});
    } else if constexpr (std::is_enum_v<T>) {
      const WireInfo info = wire_info(static_cast<T*>(nullptr));
      if (seen_.insert(info.name).second) {
        std::string values;
        const auto names = enum_names(T{});
        for (size_t i = 0; i < names.size(); ++i) {
          values += fmt::format("{}{} `{}`", i ? ", " : "", i, names[i]);
        }
        sections_.push_back(fmt::format("### {}\n\nu8, {}: {}.\n", info.name, info.doc, values));
      }
      return info.name;
    } else {
      static_assert(std::is_class_v<T>, "a type the codec does not know");
      const WireInfo info = wire_info(static_cast<T*>(nullptr));
      if (seen_.insert(info.name).second) {
        const size_t at = sections_.size();
        sections_.emplace_back();  // keeps first-use order while the fields add their types
        sections_[at] =
            fmt::format("### {}\n\n{}.\n\n{}", info.name, capitalised(info.doc), fields_table(T{}));
      }
      return info.name;
    }
  }

  template <class T>
  std::string fields_table(const T& v) {
    std::string rows;
    wire_fields(v, [&](const auto& f, const char* field, const char* doc) {
      rows += fmt::format("| {} | {} | {} |\n", field, cell(name<std::decay_t<decltype(f)>>()),
                          cell(doc));
    });
    if (rows.empty()) return "No fields.\n";
    return "| field | type | meaning |\n|---|---|---|\n" + rows;
  }

  std::string sections() const { return fmt::format("{}", fmt::join(sections_, "\n")); }

  static std::string capitalised(std::string s) {
    if (!s.empty() && s[0] >= 'a' && s[0] <= 'z') s[0] = static_cast<char>(s[0] - 'a' + 'A');
    return s;
  }

 private:
  template <class T, size_t... I>
  std::string variant_name(std::index_sequence<I...>) {
    std::string s = "one of: ";
    ((s += fmt::format("{}{} {}", I ? ", " : "", I, name<std::variant_alternative_t<I, T>>())),
     ...);
    return s;
  }

  std::set<std::string> seen_;
  std::vector<std::string> sections_;
};

template <size_t... I>
std::string messages_doc(DocTypes& types, std::index_sequence<I...>) {
  std::string summary = "| id | message | direction | what it says |\n|---|---|---|---|\n";
  std::string details;
  auto one = [&]<class M>(const M& m) {
    const int id = static_cast<int>(M::kType);
    const char* name = msg_type_name(M::kType);
    summary += fmt::format("| {} | {} | {} | {} |\n", id, name, M::kDir, cell(M::kDoc));
    details += fmt::format("\n### {} {}\n\n{}. {}\n\n{}", id, name, M::kDir, M::kDoc,
                           types.fields_table(m));
  };
  (one(std::variant_alternative_t<I, Body>{}), ...);
  return summary + details;
}

}  // namespace

const char* msg_type_name(MsgType t) {
  switch (t) {
    case MsgType::kConfigure:
      return "Configure";
    case MsgType::kReady:
      return "Ready";
    case MsgType::kPrefill:
      return "Prefill";
    case MsgType::kPrefillDone:
      return "PrefillDone";
    case MsgType::kStartChain:
      return "StartChain";
    case MsgType::kDraft:
      return "Draft";
    case MsgType::kVerify:
      return "Verify";
    case MsgType::kResult:
      return "Result";
    case MsgType::kCancel:
      return "Cancel";
    case MsgType::kCancelled:
      return "Cancelled";
    case MsgType::kHeartbeat:
      return "Heartbeat";
    case MsgType::kStop:
      return "Stop";
    case MsgType::kStopped:
      return "Stopped";
    case MsgType::kExit:
      return "Exit";
    case MsgType::kError:
      return "Error";
    case MsgType::kKvSend:
      return "KvSend";
    case MsgType::kKvExpect:
      return "KvExpect";
    case MsgType::kDraftTree:
      return "DraftTree";
    case MsgType::kFollow:
      return "Follow";
    case MsgType::kProposals:
      return "Proposals";
  }
  return "?";
}

std::vector<uint8_t> encode(const Message& m) {
  Writer w;
  w.out.reserve(64);
  w.raw(Header{kProtocolMagic, kProtocolVersion, static_cast<uint16_t>(m.type()), m.run, 0});
  std::visit([&](const auto& body) { put(w, body); }, m.body);
  const auto body_bytes = static_cast<uint32_t>(w.out.size() - sizeof(Header));
  std::memcpy(w.out.data() + offsetof(Header, body_bytes), &body_bytes, sizeof body_bytes);
  return std::move(w.out);
}

Message decode(std::span<const uint8_t> bytes) {
  Header h;
  if (bytes.size() < sizeof h) {
    throw ProtocolError(fmt::format(
        "control message of {} bytes is shorter than its {}-byte header", bytes.size(), sizeof h));
  }
  std::memcpy(&h, bytes.data(), sizeof h);
  if (h.magic != kProtocolMagic) {
    throw ProtocolError(
        fmt::format("control message with a bad magic number 0x{:08x} (expected 0x{:08x})", h.magic,
                    kProtocolMagic));
  }
  if (h.version != kProtocolVersion) {
    throw ProtocolError(fmt::format("control message of protocol version {} (this build speaks {})",
                                    h.version, kProtocolVersion));
  }
  if (h.type == 0 || h.type > kTypes) {
    throw ProtocolError(fmt::format("control message of unknown type {}", h.type));
  }
  const char* name = msg_type_name(static_cast<MsgType>(h.type));
  const size_t want = sizeof h + static_cast<size_t>(h.body_bytes);
  if (bytes.size() != want) {
    throw ProtocolError(
        fmt::format("{} message of {} bytes, its header says {}", name, bytes.size(), want));
  }
  Message m;
  m.run = h.run;
  emplace_alternative(m.body, h.type - 1, std::make_index_sequence<kTypes>{});
  Reader r(bytes.subspan(sizeof h), name);
  std::visit([&](auto& body) { get(r, body); }, m.body);
  if (r.left() != 0) {
    throw ProtocolError(
        fmt::format("{} message has {} bytes after its last field", name, r.left()));
  }
  return m;
}

std::string protocol_doc() {
  DocTypes types;
  const std::string messages = messages_doc(types, std::make_index_sequence<kTypes>{});
  return fmt::format(
      "Protocol version {}. Every control message is one frame: a 16-byte header, then the\n"
      "message's fields in the order listed below, without padding.\n\n"
      "| offset | size | field | meaning |\n"
      "|---|---|---|---|\n"
      "| 0 | 4 | magic | 0x{:08x} (\"DSI1\" read little-endian) |\n"
      "| 4 | 2 | version | {} |\n"
      "| 6 | 2 | type | the message's id (below) |\n"
      "| 8 | 4 | run | index of the run within one launch (a bench runs many); stale runs are "
      "ignored |\n"
      "| 12 | 4 | body_bytes | bytes after the header |\n\n"
      "Encoding, little-endian: `bool` one byte, 0 or 1; an enum one byte (u8), its values "
      "listed under Types;\n`i32`, `u32`, `f32` four bytes; `i64`, `u64`, `f64` eight bytes; "
      "`string` a u32 byte count, then UTF-8;\n`X[]` a u32 element count, then the elements; "
      "`one of: ...` a u8 alternative index, then that\nalternative; a struct its fields in "
      "order. A frame whose size differs from `16 + body_bytes`, with\nanother magic or version, "
      "an unknown type, a field cut short, a bool or enum out of range, or bytes\nafter the last "
      "field is rejected with an error naming the message and the field.\n\n"
      "## Messages\n\n"
      "C: the coordinator (rank 0); W: any worker; D: the drafter; T: a target.\n\n"
      "{}\n## Types\n\n{}",
      kProtocolVersion, kProtocolMagic, kProtocolVersion, messages, types.sections());
}

}  // namespace dsi
