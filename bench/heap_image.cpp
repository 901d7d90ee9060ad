// Strong mobility's cost (issue 13): the heap image of a real Lua heap of about 1 KB, 1 MB,
// 16 MB and 64 MB of live data. For each: raw used span and image bytes, and the median and p99
// time to image (zero-page scan, zstd, SHA-256) and to restore (checks, hash, zstd, copy into an
// arena at the fixed address). In-process, no jail: the jail's fork and channel come on top
// (bench_jail measures those).
//
//   build/bin/bench_heap_image [rounds] [--codec stored|zstd|lz4]   (default 15 rounds per size, zstd)
//   build/bin/bench_heap_image --jail [rounds]   strong steps through the process jail: a step
//                                               that fills the heap and stops at agent.go, then
//                                               its resume in a fresh guest (default 5 rounds)
#include <sys/mman.h>
#include <time.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include <lua.hpp>

#include "bench/stats.hpp"
#include "sandbox/guest/arena.hpp"
#include "sandbox/image/heap_image.hpp"
#include "sojourn/sandbox/process_jail.hpp"

namespace image = sojourn::sandbox::image;
using sojourn::sandbox::guest::FixedArena;
using sojourn::sandbox::guest::kArenaBase;

namespace {

constexpr std::size_t kArenaBytes = 256u << 20;

void* arena_alloc(void* ud, void* ptr, std::size_t old_size, std::size_t new_size) {
  auto* arena = static_cast<FixedArena*>(ud);
  if (new_size == 0) {
    if (ptr != nullptr) arena->release(ptr, old_size);
    return nullptr;
  }
  return ptr == nullptr ? arena->allocate(new_size) : arena->reallocate(ptr, old_size, new_size);
}

double us_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
}

// The calling thread's CPU time: the sealing's critical path when another core is free (a
// loaded machine stretches wall clock, not this).
double thread_cpu_us() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e6 + static_cast<double>(ts.tv_nsec) / 1e3;
}

// Fills a fresh state with about `bytes` of live data: tables of numbers and distinct strings,
// like an agent's collected results.
bool fill(lua_State* L, std::size_t bytes) {
  const std::string code = "data = {} local target = " + std::to_string(bytes) +
                           " local i = 0 while collectgarbage('count') * 1024 < target do i = i + 1 "
                           "data[i] = {i, i * 1.5, 'item ' .. i .. string.rep('.', i % 40)} end";
  return luaL_dostring(L, code.c_str()) == 0;
}

// Strong steps through the process jail: the whole cost a hop's two ends pay, guests included.
int jail_bench(int rounds) {
  auto jail = sojourn::sandbox::ProcessJail::start({});
  if (!jail) {
    std::fprintf(stderr, "%s\n", jail.error().message.c_str());
    return 1;
  }
  std::printf("%-8s %12s %12s %14s %14s %14s %14s %12s %12s\n", "heap", "raw bytes", "image bytes", "step med us",
              "step p99 us", "resume med us", "resume p99 us", "seal med us", "open med us");
  const std::pair<const char*, std::size_t> sizes[] = {{"1 KB", 1u << 10}, {"1 MB", 1u << 20},
                                                       {"16 MB", 16u << 20}, {"64 MB", 64u << 20}};
  for (const auto& [name, bytes] : sizes) {
    const std::string source = "function start() data = {} local target = " + std::to_string(bytes) +
                               " local i = 0 while collectgarbage('count') * 1024 < target do i = i + 1 "
                               "data[i] = {i, i * 1.5, 'item ' .. i .. string.rep('.', i % 40)} end "
                               "agent.go('B') return #data end";
    sojourn::sandbox::RunInput input;
    input.source = source;
    input.chunk_name = "bench";
    input.args = sojourn::Value::table();
    input.limits = sojourn::Limits{4'000'000'000, 160u << 20, 60'000};
    const sojourn::sandbox::AgentInput agent{"start", sojourn::Value::table(), sojourn::Value::table()};
    std::vector<double> step_us, resume_us, seal_us, open_us;
    std::uint64_t raw = 0, packed = 0;
    for (int r = 0; r < rounds; ++r) {
      auto t0 = std::chrono::steady_clock::now();
      auto first = (*jail)->run_strong(input, agent, nullptr);
      step_us.push_back(us_since(t0));
      if (!first || !first->step.strong_stop) {
        std::fprintf(stderr, "step: %s\n", first ? "no strong stop" : first.error().message.c_str());
        return 1;
      }
      t0 = std::chrono::steady_clock::now();
      auto second = (*jail)->resume_strong(first->image, input, sojourn::Value::table(), nullptr);
      resume_us.push_back(us_since(t0));
      if (!second) {
        std::fprintf(stderr, "resume: %s\n", second.error().message.c_str());
        return 1;
      }
      seal_us.push_back(static_cast<double>(first->image_us));
      open_us.push_back(static_cast<double>(second->restore_us));
      raw = first->raw_bytes;
      packed = first->image.size();
    }
    const auto step = sojourn::bench::summarize(step_us);
    const auto resume = sojourn::bench::summarize(resume_us);
    std::printf("%-8s %12llu %12llu %14.0f %14.0f %14.0f %14.0f %12.0f %12.0f\n", name,
                static_cast<unsigned long long>(raw), static_cast<unsigned long long>(packed), step.median_us,
                step.p99_us, resume.median_us, resume.p99_us, sojourn::bench::summarize(seal_us).median_us,
                sojourn::bench::summarize(open_us).median_us);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "--jail") return jail_bench(argc > 2 ? std::max(1, std::atoi(argv[2])) : 5);
  const int rounds = argc > 1 && argv[1][0] != '-' ? std::max(1, std::atoi(argv[1])) : 15;
  image::Codec codec = image::Codec::zstd;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::string(argv[i]) != "--codec") continue;
    const std::optional<image::Codec> named = image::parse_codec(argv[i + 1]);
    if (!named) {
      std::fprintf(stderr, "unknown codec %s (stored, zstd, lz4)\n", argv[i + 1]);
      return 2;
    }
    codec = *named;
  }
  auto build = image::build_id_of("/proc/self/exe");
  if (!build) {
    std::fprintf(stderr, "%s\n", build.error().message.c_str());
    return 1;
  }
  std::printf("%-8s %12s %12s %7s %14s %14s %14s %16s %16s\n", "heap", "raw bytes", "image bytes", "ratio",
              "image med us", "image p99 us", "image cpu us", "restore med us", "restore p99 us");
  const std::pair<const char*, std::size_t> sizes[] = {{"1 KB", 1u << 10}, {"1 MB", 1u << 20},
                                                       {"16 MB", 16u << 20}, {"64 MB", 64u << 20}};
  for (const auto& [name, bytes] : sizes) {
    auto arena = FixedArena::map_at(kArenaBase, kArenaBytes);
    if (!arena) {
      std::fprintf(stderr, "%s\n", arena.error().message.c_str());
      return 1;
    }
    lua_State* L = lua_newstate(arena_alloc, &*arena);
    luaL_openlibs(L);
    luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_OFF);
    if (!fill(L, bytes)) {
      std::fprintf(stderr, "fill: %s\n", lua_tostring(L, -1));
      return 1;
    }
    const std::size_t used = (arena->high_water() + image::kPageBytes - 1) & ~(image::kPageBytes - 1);
    const std::span<const std::uint8_t> span(reinterpret_cast<const std::uint8_t*>(kArenaBase), used);
    const image::ImageSource source{*build, kArenaBase, arena->size(), reinterpret_cast<std::uintptr_t>(L), codec};
    std::vector<double> take_us, take_cpu_us, restore_us;
    std::vector<std::uint8_t> last;
    std::vector<std::uint8_t> target(used);  // where a restore copies (the fresh arena's place)
    for (int r = 0; r < rounds; ++r) {
      auto t0 = std::chrono::steady_clock::now();
      const double cpu0 = thread_cpu_us();
      auto taken = image::take_image(source, span);
      take_cpu_us.push_back(thread_cpu_us() - cpu0);
      take_us.push_back(us_since(t0));
      if (!taken) return 1;
      t0 = std::chrono::steady_clock::now();
      auto opened = image::open_image(*taken, {*build, kArenaBase, kArenaBytes});
      if (!opened) return 1;
      std::memcpy(target.data(), opened->used.data(), opened->used.size());
      restore_us.push_back(us_since(t0));
      if (opened->used.size() != used || std::memcmp(opened->used.data(), span.data(), used) != 0) {
        std::fprintf(stderr, "restored bytes differ\n");
        return 1;
      }
      last = std::move(*taken);
    }
    const auto take = sojourn::bench::summarize(take_us);
    const auto restore = sojourn::bench::summarize(restore_us);
    const auto take_cpu = sojourn::bench::summarize(take_cpu_us);
    std::printf("%-8s %12zu %12zu %6.1fx %14.0f %14.0f %14.0f %16.0f %16.0f\n", name, used, last.size(),
                static_cast<double>(used) / static_cast<double>(last.size()), take.median_us, take.p99_us,
                take_cpu.median_us, restore.median_us, restore.p99_us);
    lua_close(L);
    ::munmap(reinterpret_cast<void*>(kArenaBase), arena->size());
  }
  return 0;
}
