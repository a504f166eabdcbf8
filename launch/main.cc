// The `dsi` command line.
#include <cstdio>

#include "runtime/version.h"

int main() {
  std::puts(dsi::version_string());
  return 0;
}
