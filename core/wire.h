// How the control-plane codec (core/protocol.cc) sees a struct, so that its encoder, its
// decoder and docs/protocol.md all read one field list:
//   wire_fields(s, v)  calls v(field, "name", "meaning") for every field of s in wire order;
//                      s is const when encoding or documenting, mutable when decoding.
//   wire_info(T*)      names a struct or enum type and says what it is (docs/protocol.md).
//   enum_names(E{})    names every value of an enum (sent as one byte, checked on decode);
//                      the same names spell the enum in the JSON worker spec and the trace.
#pragma once

#include <concepts>
#include <type_traits>

namespace dsi {

// `template <Is<T> S, class V> void wire_fields(S& s, V&& v)` matches T and const T.
template <class S, class T>
concept Is = std::same_as<std::remove_const_t<S>, T>;

struct WireInfo {
  const char* name;
  const char* doc;
};

}  // namespace dsi
