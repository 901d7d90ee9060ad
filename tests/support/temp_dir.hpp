// Test support: a fresh directory under the system's temporary directory, removed with
// everything in it when the test ends. Tests write their files here, never into the
// working directory or the source tree.
#pragma once

#include <doctest/doctest.h>

#include <stdlib.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

namespace sojourn::test {

class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "sojourn-test-XXXXXX").string();
    REQUIRE(::mkdtemp(pattern.data()) != nullptr);
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return (std::filesystem::path(path_) / name).string(); }
  // Writes `text` to the file `name` here; returns its path.
  std::string write(const std::string& name, const std::string& text) const {
    const std::string file = *this / name;
    std::ofstream(file) << text;
    REQUIRE(std::filesystem::file_size(file) == text.size());
    return file;
  }

 private:
  std::string path_;
};

// A file's whole contents, byte for byte ("" when it cannot be read).
inline std::string file_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::string text;
  text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  return text;
}

// True when `path` lies inside `dir` (both made absolute and normal first).
inline bool is_inside(const std::string& path, const std::string& dir) {
  auto p = std::filesystem::weakly_canonical(std::filesystem::absolute(path));
  auto d = std::filesystem::weakly_canonical(std::filesystem::absolute(dir));
  auto [d_end, p_at] = std::mismatch(d.begin(), d.end(), p.begin(), p.end());
  return d_end == d.end();
}

}  // namespace sojourn::test
