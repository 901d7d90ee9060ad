// A token-level scanner for Lua 5.1/LuaJIT source: enough of the lexer (strings, long
// strings, comments, numbers, names) to find where a function's text starts and ends in
// its chunk, and to check that a text is exactly one function expression.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace sojourn::sandbox::lua {

// One `function ... end` found in a chunk, rewritten as an anonymous function expression:
// `local function f(a)` and `function t.a.b(a)` become `function(a)`, a method
// `function T:m(a)` becomes `function(self, a)`. Newlines are kept, so each line of the
// text is the same line as in the chunk.
struct FunctionText {
  std::string text;
  std::size_t offset;  // of `function` in the chunk text
};

// Where a `function` keyword is: the lexer can resume there.
struct FunctionStart {
  int line;
  std::size_t offset;
};

// Every `function` keyword of `chunk`, a text whose first line is line `chunk_first_line`,
// in order; one pass, made once per chunk and conversion. Stops at a lexical error.
std::vector<FunctionStart> index_functions(std::string_view chunk, int chunk_first_line);

// Every function whose `function` keyword is on `first_line` and whose `end` is on
// `last_line`, nested ones included, in source order; it reads only those functions.
std::vector<FunctionText> find_functions(std::string_view chunk, const std::vector<FunctionStart>& index, int first_line,
                                         int last_line);
// The same, indexing the chunk first.
std::vector<FunctionText> find_functions(std::string_view chunk, int chunk_first_line, int first_line, int last_line);

// The one definition of what is loaded to rebuild a function from its text:
//   <padding newlines>local a, b; a, b = nil; return <text>
// (the local list only when there are upvalue names). Calling the loaded chunk makes a new
// closure whose upvalues are those locals. The text is loaded after `return `, where a
// leading '#' is the length operator and a byte order mark is part of a name: the text is
// checked inside this chunk, never on its own.
std::string function_chunk(std::string_view text, const std::vector<std::string>& upvalue_names,
                           std::size_t padding_lines);

// True when `chunk`, lexed as LuaJIT lexes a main chunk, is exactly what function_chunk
// makes of one function expression: an optional `local NAMES; NAMES = nil;`, then
// `return function (params) body end` and nothing else (comments and whitespace aside).
// Calling such a chunk runs no code of the text.
bool is_one_function_chunk(std::string_view chunk);

// is_one_function_chunk(function_chunk(text, {}, 0)): `text` is `function (params) body end`
// and nothing else, as the loader will see it.
bool is_one_function_expression(std::string_view text);

// True when `text` has a number literal that LuaJIT makes a cdata of (1LL, 2ULL, 0i): the
// lexer loads the FFI library on demand for it, and this LuaJIT (2.1.0-beta3, 2022) was
// seen to corrupt its heap when such texts are loaded thousands of times into one state
// (a crash in lua_close). Function texts with them neither leave nor enter a run.
bool has_cdata_literal(std::string_view text);

// True when `text`, lexed as LuaJIT lexes a chunk, names each of `call_only` as a variable
// only in the form `NAME . FIELD (` (a call of one of its fields, never right after
// `function`: that form assigns the field) and names none of `banned` as a variable at all.
// A name right after a single '.' or ':' is a field, not a variable. The pooled run's proof
// that a chunk cannot reach a library table (lua_state_run.cpp): the only values that
// hold one are those names. False when the text does not lex.
bool names_tables_only_in_calls(std::string_view text, const std::vector<std::string>& call_only,
                                const std::vector<std::string>& banned);

// True when `text`, lexed as LuaJIT lexes a chunk, names none of `banned` as a variable and
// names `table` as a variable only as `table . F (` with F one of `calls`, or as `table . R`
// with R one of `reads` followed by anything but `(`, `{`, a string or `=` (a read, never a
// call or an assignment); never right after `function`. Fields and methods (after a single
// '.' or ':') are not variables. False when the text does not lex. The agent runtime's rule
// for a step that may run on the network thread (docs/migration.md).
bool names_only_listed_fields(std::string_view text, std::string_view table, const std::vector<std::string>& calls,
                              const std::vector<std::string>& reads, const std::vector<std::string>& banned);

// A Lua name that is not a keyword.
bool is_lua_identifier(std::string_view s);

}  // namespace sojourn::sandbox::lua
