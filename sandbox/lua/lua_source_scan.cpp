// The scanner follows LuaJIT's lexer (lj_lex.c) where it matters for finding block
// keywords: newline pairs, long brackets, escapes (\z included), identifier bytes >= 0x80.
#include "sandbox/lua/lua_source_scan.hpp"

#include <algorithm>
#include <cstdint>
#include <optional>

namespace sojourn::sandbox::lua {

namespace {

bool is_ident_char(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c >= 0x80;
}
bool is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
bool is_newline(char c) { return c == '\n' || c == '\r'; }

enum class Kind : std::uint8_t { name, number, other, eof, error };

struct Token {
  Kind kind = Kind::eof;
  std::size_t begin = 0, end = 0;
  int line = 0;
};

class Lexer {
 public:
  Lexer(std::string_view text, int first_line) : s_(text), line_(first_line) {
    // LuaJIT skips a UTF-8 byte order mark and a first line starting with '#'.
    if (s_.substr(0, 3) == "\xef\xbb\xbf") pos_ = 3;
    if (pos_ < s_.size() && s_[pos_] == '#') {
      while (pos_ < s_.size() && !is_newline(s_[pos_])) ++pos_;
    }
  }
  // Resumes between two tokens, at `offset` on `line` (a place an index recorded).
  Lexer(std::string_view text, std::size_t offset, int line) : s_(text), pos_(offset), line_(line) {}

  Token next() {
    for (;;) {
      if (pos_ >= s_.size()) return Token{Kind::eof, pos_, pos_, line_};
      const char c = s_[pos_];
      if (is_newline(c)) {
        newline();
      } else if (c == ' ' || c == '\t' || c == '\v' || c == '\f') {
        ++pos_;
      } else if (c == '-' && peek(1) == '-') {
        pos_ += 2;
        int level = pos_ < s_.size() && s_[pos_] == '[' ? long_bracket_level() : -1;
        if (level >= 0) {
          if (!skip_long(level)) return error();
        } else {
          while (pos_ < s_.size() && !is_newline(s_[pos_])) ++pos_;
        }
      } else {
        break;
      }
    }
    Token t{Kind::other, pos_, pos_, line_};
    const auto c = static_cast<unsigned char>(s_[pos_]);
    if (is_digit(c) || (c == '.' && is_digit(static_cast<unsigned char>(peek(1))))) {
      number();
      t.kind = Kind::number;
    } else if (is_ident_char(c)) {
      while (pos_ < s_.size() && is_ident_char(static_cast<unsigned char>(s_[pos_]))) ++pos_;
      t.kind = Kind::name;
    } else if (c == '"' || c == '\'') {
      if (!short_string(static_cast<char>(c))) return error();
    } else if (c == '[') {
      const int level = long_bracket_level();
      if (level >= 0) {
        if (!skip_long(level)) return error();
      } else if (level == -2) {
        return error();  // "[=" without a second bracket
      } else {
        ++pos_;
      }
    } else {
      ++pos_;
    }
    t.end = pos_;
    return t;
  }

  std::string_view text(const Token& t) const { return s_.substr(t.begin, t.end - t.begin); }

 private:
  char peek(std::size_t ahead) const { return pos_ + ahead < s_.size() ? s_[pos_ + ahead] : '\0'; }

  Token error() { return Token{Kind::error, pos_, pos_, line_}; }

  void newline() {
    const char c = s_[pos_++];
    if (pos_ < s_.size() && is_newline(s_[pos_]) && s_[pos_] != c) ++pos_;
    ++line_;
  }

  // At '[': the level of a long bracket [==[ (number of '='), -1 for a plain '[',
  // -2 for '[=' not followed by '['. Consumes the bracket when it is one.
  int long_bracket_level() {
    std::size_t p = pos_ + 1;
    while (p < s_.size() && s_[p] == '=') ++p;
    if (p < s_.size() && s_[p] == '[') {
      const int level = static_cast<int>(p - pos_ - 1);
      pos_ = p + 1;
      return level;
    }
    return p == pos_ + 1 ? -1 : -2;
  }

  bool skip_long(int level) {
    while (pos_ < s_.size()) {
      const char c = s_[pos_];
      if (is_newline(c)) {
        newline();
      } else if (c == ']') {
        std::size_t p = pos_ + 1;
        while (p < s_.size() && s_[p] == '=') ++p;
        if (p < s_.size() && s_[p] == ']' && static_cast<int>(p - pos_ - 1) == level) {
          pos_ = p + 1;
          return true;
        }
        ++pos_;
      } else {
        ++pos_;
      }
    }
    return false;
  }

  bool short_string(char quote) {
    ++pos_;
    while (pos_ < s_.size()) {
      const char c = s_[pos_];
      if (c == quote) {
        ++pos_;
        return true;
      }
      if (is_newline(c)) return false;  // unfinished string
      if (c != '\\') {
        ++pos_;
        continue;
      }
      ++pos_;
      if (pos_ >= s_.size()) return false;
      if (is_newline(s_[pos_])) {
        newline();
      } else if (s_[pos_] == 'z') {
        ++pos_;
        while (pos_ < s_.size() && (is_newline(s_[pos_]) || s_[pos_] == ' ' || s_[pos_] == '\t' ||
                                    s_[pos_] == '\v' || s_[pos_] == '\f')) {
          if (is_newline(s_[pos_])) newline();
          else ++pos_;
        }
      } else {
        ++pos_;
      }
    }
    return false;
  }

  void number() {
    char exponent = 'e';
    if (s_[pos_] == '0' && (peek(1) == 'x' || peek(1) == 'X')) exponent = 'p';
    char previous = '\0';
    while (pos_ < s_.size()) {
      const auto c = static_cast<unsigned char>(s_[pos_]);
      const bool sign = (c == '-' || c == '+') && (previous | 0x20) == exponent;
      if (!is_ident_char(c) && c != '.' && !sign) break;
      previous = static_cast<char>(c);
      ++pos_;
    }
  }

  std::string_view s_;
  std::size_t pos_ = 0;
  int line_;
};

// The change a token makes to the block depth: function, do, if, repeat open a block;
// end closes function, do, if; until closes repeat.
int block_step(std::string_view name) {
  if (name == "function" || name == "do" || name == "if" || name == "repeat") return 1;
  if (name == "end" || name == "until") return -1;
  return 0;
}

struct FunctionHeader {
  std::size_t begin;      // of `function`
  std::string header;     // "function" + kept newlines + "(" or "(self" [", "]
  std::size_t body_from;  // chunk offset copied after the header
};

// Reads a function header from `function`: [name {'.' name} [':' name]] '('. Returns false
// when it does not look like one.
bool read_header(Lexer& lexer, const Token& function, FunctionHeader& out) {
  bool method = false;
  Token t = lexer.next();
  if (t.kind == Kind::name) {
    for (;;) {
      t = lexer.next();
      const std::string_view sep = lexer.text(t);
      if (t.kind != Kind::other || (sep != "." && sep != ":")) break;
      method = sep == ":";
      t = lexer.next();
      if (t.kind != Kind::name) return false;
      if (method) {
        t = lexer.next();
        break;
      }
    }
  }
  if (t.kind != Kind::other || lexer.text(t) != "(") return false;
  out.header = "function";
  out.header.append(static_cast<std::size_t>(t.line - function.line), '\n');
  if (!method) {
    out.header += '(';
  } else {
    const Token after = lexer.next();
    out.header += lexer.text(after) == ")" ? "(self" : "(self, ";
  }
  out.begin = function.begin;
  out.body_from = t.end;
  return true;
}

}  // namespace

std::vector<FunctionStart> index_functions(std::string_view chunk, int chunk_first_line) {
  std::vector<FunctionStart> index;
  Lexer lexer(chunk, chunk_first_line);
  for (;;) {
    const Token t = lexer.next();
    if (t.kind == Kind::eof || t.kind == Kind::error) break;
    if (t.kind == Kind::name && lexer.text(t) == "function") index.push_back(FunctionStart{t.line, t.begin});
  }
  return index;
}

std::vector<FunctionText> find_functions(std::string_view chunk, const std::vector<FunctionStart>& index, int first_line,
                                         int last_line) {
  std::vector<FunctionText> found;
  auto it = std::lower_bound(index.begin(), index.end(), first_line,
                             [](const FunctionStart& f, int line) { return f.line < line; });
  for (; it != index.end() && it->line == first_line; ++it) {
    Lexer lexer(chunk, it->offset, it->line);
    const Token function = lexer.next();
    FunctionHeader block{0, {}, 0};
    if (!read_header(lexer, function, block)) continue;
    int depth = 1;
    for (;;) {
      const Token t = lexer.next();
      if (t.kind == Kind::eof || t.kind == Kind::error || t.line > last_line) break;
      if (t.kind != Kind::name) continue;
      const std::string_view name = lexer.text(t);
      depth += block_step(name);
      if (depth > 0) continue;
      if (name == "end" && t.line == last_line) {
        std::string text = std::move(block.header);
        text.append(chunk.substr(block.body_from, t.end - block.body_from));
        found.push_back(FunctionText{std::move(text), block.begin});
      }
      break;
    }
  }
  return found;
}

std::vector<FunctionText> find_functions(std::string_view chunk, int chunk_first_line, int first_line, int last_line) {
  return find_functions(chunk, index_functions(chunk, chunk_first_line), first_line, last_line);
}

std::string function_chunk(std::string_view text, const std::vector<std::string>& upvalue_names,
                           std::size_t padding_lines) {
  std::string out(padding_lines, '\n');
  if (!upvalue_names.empty()) {
    std::string list;
    for (std::size_t i = 0; i < upvalue_names.size(); ++i) list.append(i ? ", " : "").append(upvalue_names[i]);
    out.append("local ").append(list).append("; ").append(list).append(" = nil; ");
  }
  return out.append("return ").append(text);
}

namespace {

bool is_symbol(const Lexer& lexer, const Token& t, std::string_view symbol) {
  return t.kind == Kind::other && lexer.text(t) == symbol;
}
bool is_keyword(const Lexer& lexer, const Token& t, std::string_view keyword) {
  return t.kind == Kind::name && lexer.text(t) == keyword;
}

// NAME {',' NAME}, then the token after the list; false when it is not such a list.
bool read_name_list(Lexer& lexer, Token& after) {
  for (;;) {
    const Token name = lexer.next();
    if (name.kind != Kind::name || !is_lua_identifier(lexer.text(name))) return false;
    after = lexer.next();
    if (!is_symbol(lexer, after, ",")) return true;
  }
}

}  // namespace

bool is_one_function_chunk(std::string_view chunk) {
  // The main-chunk constructor: LuaJIT skips a byte order mark and a '#' line at the start
  // of what it loads, and so does this lexer, on the same bytes.
  Lexer lexer(chunk, 1);
  Token t = lexer.next();
  if (is_keyword(lexer, t, "local")) {
    Token after;
    if (!read_name_list(lexer, after) || !is_symbol(lexer, after, ";")) return false;
    if (!read_name_list(lexer, after) || !is_symbol(lexer, after, "=")) return false;
    if (!is_keyword(lexer, lexer.next(), "nil") || !is_symbol(lexer, lexer.next(), ";")) return false;
    t = lexer.next();
  }
  if (!is_keyword(lexer, t, "return")) return false;
  if (!is_keyword(lexer, lexer.next(), "function") || !is_symbol(lexer, lexer.next(), "(")) return false;
  int depth = 1;
  for (;;) {
    t = lexer.next();
    if (t.kind == Kind::eof || t.kind == Kind::error) return false;
    if (t.kind != Kind::name) continue;
    const std::string_view name = lexer.text(t);
    // A block opened inside must close inside: `until` only closes a repeat.
    depth += block_step(name);
    if (depth == 0) return name == "end" && lexer.next().kind == Kind::eof;
  }
}

bool is_one_function_expression(std::string_view text) { return is_one_function_chunk(function_chunk(text, {}, 0)); }

bool has_cdata_literal(std::string_view text) {
  Lexer lexer(text, 1);
  for (;;) {
    const Token t = lexer.next();
    if (t.kind == Kind::eof || t.kind == Kind::error) return false;
    if (t.kind != Kind::number) continue;
    const std::string_view n = lexer.text(t);
    const char last = n.back();
    if (last == 'i' || last == 'I') return true;
    if (n.size() >= 2 && (last == 'l' || last == 'L') && (n[n.size() - 2] == 'l' || n[n.size() - 2] == 'L')) return true;
  }
}

namespace {
// After `.` or `:` (not `..` or `::`), a name is a field or a method: not a variable.
// `before` and `last` are the two tokens before the name.
bool names_a_field(const Lexer& lexer, const Token& before, const Token& last) {
  return (is_symbol(lexer, last, ".") && !is_symbol(lexer, before, ".")) ||
         (is_symbol(lexer, last, ":") && !is_symbol(lexer, before, ":"));
}
}  // namespace

bool names_tables_only_in_calls(std::string_view text, const std::vector<std::string>& call_only,
                                const std::vector<std::string>& banned) {
  Lexer lexer(text, 1);
  Token before{Kind::eof, 0, 0, 0};  // the two tokens before `t`
  Token last{Kind::eof, 0, 0, 0};
  for (;;) {
    const Token t = lexer.next();
    if (t.kind == Kind::error) return false;
    if (t.kind == Kind::eof) return true;
    if (t.kind == Kind::name) {
      const bool field = names_a_field(lexer, before, last);
      const std::string_view name = lexer.text(t);
      if (!field) {
        if (std::find(banned.begin(), banned.end(), name) != banned.end()) return false;
        if (std::find(call_only.begin(), call_only.end(), name) != call_only.end()) {
          if (is_keyword(lexer, last, "function")) return false;
          if (!is_symbol(lexer, lexer.next(), ".")) return false;
          const Token member = lexer.next();
          if (member.kind != Kind::name || !is_lua_identifier(lexer.text(member))) return false;
          const Token open = lexer.next();
          if (!is_symbol(lexer, open, "(")) return false;
          before = member;
          last = open;
          continue;
        }
      }
    }
    before = last;
    last = t;
  }
}

namespace {
// A string literal: "...", '...' or a long bracket [[...]] / [=[...]=].
bool is_string_token(const Lexer& lexer, const Token& t) {
  if (t.kind != Kind::other) return false;
  const std::string_view s = lexer.text(t);
  return !s.empty() && (s[0] == '"' || s[0] == '\'' || (s[0] == '[' && s.size() > 1));
}
}  // namespace

bool names_only_listed_fields(std::string_view text, std::string_view table, const std::vector<std::string>& calls,
                              const std::vector<std::string>& reads, const std::vector<std::string>& banned) {
  auto listed = [](const std::vector<std::string>& names, std::string_view name) {
    return std::find(names.begin(), names.end(), name) != names.end();
  };
  Lexer lexer(text, 1);
  Token before{Kind::eof, 0, 0, 0};  // the two tokens before `t`
  Token last{Kind::eof, 0, 0, 0};
  std::optional<Token> held;  // a token read ahead, looked at next
  for (;;) {
    const Token t = held ? *held : lexer.next();
    held.reset();
    if (t.kind == Kind::error) return false;
    if (t.kind == Kind::eof) return true;
    if (t.kind == Kind::name) {
      const bool field = names_a_field(lexer, before, last);
      const std::string_view name = lexer.text(t);
      if (!field) {
        if (listed(banned, name)) return false;
        if (name == table) {
          if (is_keyword(lexer, last, "function")) return false;
          const Token dot = lexer.next();
          if (!is_symbol(lexer, dot, ".")) return false;
          const Token member = lexer.next();
          if (member.kind != Kind::name) return false;
          const std::string_view m = lexer.text(member);
          const Token after = lexer.next();
          if (after.kind == Kind::error) return false;
          const bool call_form = is_symbol(lexer, after, "(") || is_symbol(lexer, after, "{") ||
                                 is_string_token(lexer, after) || is_symbol(lexer, after, "=");
          if (call_form ? !(listed(calls, m) && is_symbol(lexer, after, "(")) : !listed(reads, m)) return false;
          if (call_form) {
            before = member;
            last = after;
          } else {
            before = dot;
            last = member;
            held = after;
          }
          continue;
        }
      }
    }
    before = last;
    last = t;
  }
}

bool is_lua_identifier(std::string_view s) {
  static constexpr std::string_view kKeywords[] = {"and", "break", "do", "else", "elseif", "end", "false",
                                                   "for", "function", "goto", "if", "in", "local", "nil",
                                                   "not", "or", "repeat", "return", "then", "true", "until",
                                                   "while"};
  if (s.empty() || is_digit(static_cast<unsigned char>(s[0]))) return false;
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (!((u >= 'a' && u <= 'z') || (u >= 'A' && u <= 'Z') || is_digit(u) || u == '_')) return false;
  }
  return std::find(std::begin(kKeywords), std::end(kKeywords), s) == std::end(kKeywords);
}

}  // namespace sojourn::sandbox::lua
