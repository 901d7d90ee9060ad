// Test support: check an error by its code and the fields that matter (a service name, an
// agent id, a limit), not by its whole sentence, so the wording can improve without test churn.
//
//   CHECK_ERROR(result, Errc::no_such_service, "kv.get");     // code, and the message names kv.get
//   CHECK_ERROR(error, kvm::Cause::budget, "250 ms");         // the monitor's errors work the same
//
// The first argument is a Result or an error itself (sojourn::Error or kvm::Error); the code is
// an Errc or a kvm::Cause. The macro is one non-fatal CHECK; what differs is reported above it.
#pragma once

#include <doctest/doctest.h>

#include <initializer_list>
#include <string>
#include <string_view>

namespace sojourn::test {

template <class E>
std::string error_message(const E& error) {
  if constexpr (requires { error.message(); }) {
    return error.message();
  } else {
    return error.message;
  }
}

template <class E>
auto error_code(const E& error) {
  if constexpr (requires { error.cause; }) {
    return error.cause;
  } else {
    return error.code;
  }
}

// An error is taken as it is; anything with error() (a Result) gives its error, and a Result
// that holds a value fails the check instead of throwing.
template <class R>
const auto* error_of(const R& outcome) {
  if constexpr (requires { outcome.error(); }) {
    return outcome.ok() ? nullptr : &outcome.error();
  } else {
    return &outcome;
  }
}

template <class R, class Code>
bool check_error(const R& outcome, Code expected, std::initializer_list<std::string_view> keys, const char* file,
                 int line) {
  const auto* error = error_of(outcome);
  if (error == nullptr) {
    ADD_MESSAGE_AT(file, line, "expected an error, got a value");
    return false;
  }
  bool held = true;
  const std::string message = error_message(*error);
  if (error_code(*error) != expected) {
    ADD_MESSAGE_AT(file, line, "unexpected error code; the message: " << message);
    held = false;
  }
  for (std::string_view key : keys) {
    if (message.find(key) == std::string::npos) {
      ADD_MESSAGE_AT(file, line, "the error does not name \"" << std::string(key) << "\": " << message);
      held = false;
    }
  }
  return held;
}

}  // namespace sojourn::test

#define CHECK_ERROR(outcome, code, ...) \
  CHECK(::sojourn::test::check_error((outcome), (code), {__VA_ARGS__}, __FILE__, __LINE__))
