// Prints the part of docs/protocol.md that the codec renders (core/protocol.h, protocol_doc),
// or with --write FILE replaces it in FILE between the "generated" markers. The unit test
// ProtocolDoc.DocsHoldWhatTheCodecRenders fails when the two differ.
#include <fmt/format.h>

#include <fstream>
#include <sstream>
#include <string>

#include "core/protocol.h"

int main(int argc, char** argv) {
  const std::string text = dsi::protocol_doc();
  if (argc == 1) {
    fmt::print("{}", text);
    return 0;
  }
  if (argc != 3 || std::string(argv[1]) != "--write") {
    fmt::print(stderr, "usage: {} [--write docs/protocol.md]\n", argv[0]);
    return 2;
  }
  const std::string path = argv[2];
  std::ifstream in(path);
  if (!in) {
    fmt::print(stderr, "protocol_doc: cannot read '{}'\n", path);
    return 1;
  }
  std::stringstream ss;
  ss << in.rdbuf();
  std::string doc = ss.str();
  const std::string begin = "<!-- generated: begin -->\n", end = "<!-- generated: end -->";
  const size_t b = doc.find(begin), e = doc.find(end);
  if (b == std::string::npos || e == std::string::npos || e < b) {
    fmt::print(stderr, "protocol_doc: '{}' lacks the markers '{}' and '{}'\n", path,
               begin.substr(0, begin.size() - 1), end);
    return 1;
  }
  doc.replace(b + begin.size(), e - b - begin.size(), text);
  std::ofstream out(path);
  out << doc;
  if (!out) {
    fmt::print(stderr, "protocol_doc: cannot write '{}'\n", path);
    return 1;
  }
  return 0;
}
