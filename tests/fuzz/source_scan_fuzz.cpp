// libFuzzer target: the function-source scanner over any chunk text and line range. Every
// text it finds lies in the chunk, starts at a `function` keyword the index has, and keeps
// the chunk's lines.
#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "sandbox/lua/lua_source_scan.hpp"
#include "tests/fuzz/fuzz_check.hpp"

using namespace sojourn::sandbox::lua;
namespace fuzz = sojourn::fuzz;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  const int first_line = in.ConsumeIntegralInRange(-2, 64);
  const int last_line = first_line + in.ConsumeIntegralInRange(-1, 16);
  const int chunk_first_line = in.ConsumeIntegralInRange(-1, 4);
  const std::string chunk = in.ConsumeRemainingBytesAsString();

  const auto index = index_functions(chunk, chunk_first_line);
  for (std::size_t i = 0; i < index.size(); ++i) {
    fuzz::check(index[i].offset + 8 <= chunk.size() && chunk.compare(index[i].offset, 8, "function") == 0,
                "an indexed start is a `function` keyword");
    if (i > 0) fuzz::check(index[i - 1].offset < index[i].offset, "the index is in source order");
  }
  const auto found = find_functions(chunk, index, first_line, last_line);
  for (const FunctionText& f : found) {
    fuzz::check(f.offset < chunk.size(), "a function lies in its chunk");
    fuzz::check(std::any_of(index.begin(), index.end(), [&](const FunctionStart& s) { return s.offset == f.offset; }),
                "a found function starts at an indexed keyword");
    fuzz::check(f.text.rfind("function", 0) == 0, "a found text is a function expression");
    (void)is_one_function_expression(f.text);
    (void)has_cdata_literal(f.text);
  }
  const auto again = find_functions(chunk, chunk_first_line, first_line, last_line);
  fuzz::check(again.size() == found.size(), "indexing first or not finds the same functions");
  (void)is_one_function_expression(chunk);
  (void)has_cdata_literal(chunk);
  (void)is_lua_identifier(chunk);
  return 0;
}
