// The travel check of strong mobility (issue 13): before a strong agent is imaged, everything it
// can reach is walked for values that cannot travel in a heap image (a full or light userdata:
// a host handle; an FFI cdata: a pointer or FFI state). The image would carry their bytes, but
// what they stand for (a descriptor, host memory, the FFI's C types) stays behind.
//
// Roots: the agent coroutine's stack frames (each frame's function with its upvalues and
// environment, its named locals and varargs), every coroutine reachable from there
// (the chain of resumes included), then the globals. Tables are walked with their keys, values
// and metatables; functions with their upvalues and environments, except a full userdata held
// as an upvalue of a C function: that is a library's own state in the arena (math.random keeps
// its PRNG state so), put there by C code, never by the agent. Nothing is allocated in the
// Lua heap: the walk uses the main thread's stack and a host-side visited set. Not checked:
// unnamed slots of a frame ("(*temporary)" to lua_getlocal): mostly stale values of finished
// expressions, which the agent can no longer reach; a value held only by an expression in
// progress around the agent.go call (f(handle(), agent.go(p))) escapes the check.
#pragma once

#include <functional>
#include <string>

struct lua_State;

namespace sojourn::sandbox::strong {

struct TravelCheck {
  enum class Outcome { clean, refused, interrupted };
  Outcome outcome = Outcome::clean;
  // For refused: the path of the first offending value met, e.g. "locals.x.conn (userdata)" or
  // "locals.gen.upvalues.ptr (cdata)".
  std::string path;
};

// Walks what `co` (a suspended agent coroutine) can reach, using `L` (its main thread, not
// running) as scratch. `interrupted` is polled every few thousand values; when it answers true
// the walk stops with Outcome::interrupted.
TravelCheck check_travel(lua_State* L, lua_State* co, const std::function<bool()>& interrupted);

}  // namespace sojourn::sandbox::strong
