// Inputs of the gtest suites (unit and GPU), of two kinds:
// - Independent reference files, made by other tools and kept outside the repository: the
//   vocab-only GGUFs with their tokenizer cases and the stand-in models quantized by llama.cpp
//   (README.txt of that folder). They live in DSI_TESTDATA_DIR: at run time the environment
//   variable of that name, else the folder compiled in (../shared/testdata beside the source
//   tree). A test that needs one starts with DSI_REQUIRE_TESTDATA(name), which skips it with
//   the missing path when the file is absent.
// - Models a test writes itself (model/random_model.h): everything that only needs some
//   llama model of a given shape, so that it runs in any checkout.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>

#include "model/random_model.h"

namespace dsi::test {

inline std::string testdata_dir() {
  const char* env = std::getenv("DSI_TESTDATA_DIR");
  return env != nullptr && *env != '\0' ? std::string(env) : std::string(DSI_TESTDATA_DIR);
}

inline std::string testdata_path(const std::string& name) {
  return testdata_dir() + "/" + name;
}

inline bool have_testdata(const std::string& name) {
  return std::filesystem::is_regular_file(testdata_path(name));
}

inline std::string missing_testdata(const std::string& name) {
  return "test data missing: " + testdata_path(name) +
         " (independent reference files kept outside the repository; set DSI_TESTDATA_DIR to "
         "the folder that holds them)";
}

// The "tiny" shape of `dsi make-model` (dim 256, 4 layers, 8/4 heads, ffn 704, vocab 1024,
// tied head) with weights of `type`, seed 1.
inline RandomModelSpec tiny_spec(GgmlType type = GgmlType::F16) {
  RandomModelSpec s = random_model_shape("tiny");
  s.type = type;
  return s;
}

// Writes `spec` as a GGUF file once per process and `tag`, in a folder of its own under the
// temporary directory that is removed when the process exits. Returns the file's path.
inline std::string written_model(const RandomModelSpec& spec, const std::string& tag) {
  struct Folder {
    std::filesystem::path dir;
    std::map<std::string, std::string> files;
    Folder() {
      dir = std::filesystem::temp_directory_path() /
            ("dsi_test_models_" + std::to_string(::getpid()));
      std::filesystem::create_directories(dir);
    }
    ~Folder() {
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    }
  };
  static Folder folder;
  auto it = folder.files.find(tag);
  if (it != folder.files.end()) return it->second;
  const std::string path = (folder.dir / (tag + ".gguf")).string();
  random_model_writer(spec).write(path);
  return folder.files[tag] = path;
}

// The tiny random model in F16 (see tiny_spec).
inline std::string tiny_model() {
  return written_model(tiny_spec(), "tiny-f16");
}

}  // namespace dsi::test

// Skips the running test, naming the path, when the reference file `name` is absent.
#define DSI_REQUIRE_TESTDATA(name)                                                              \
  do {                                                                                          \
    if (!::dsi::test::have_testdata(name)) GTEST_SKIP() << ::dsi::test::missing_testdata(name); \
  } while (0)
