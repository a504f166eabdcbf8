// A whole file mapped read-only into memory (mmap), unmapped on destruction, and a plain
// whole-file read for small text files (JSON). Shared by the model and tokenizer readers;
// neither interprets the bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace dsi {

class MappedFile {
 public:
  // Throws ModelError naming the path when it cannot be opened, is not a regular file, is
  // smaller than min_size bytes, or cannot be mapped.
  static std::unique_ptr<MappedFile> open(const std::string& path, size_t min_size);
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  MappedFile(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  const uint8_t* data_;
  size_t size_;
};

// The whole file as a string; throws ModelError naming the path when it cannot be read.
std::string read_text_file(const std::string& path);

}  // namespace dsi
