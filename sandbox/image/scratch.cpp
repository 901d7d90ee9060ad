#include "sandbox/image/scratch.hpp"

#include <algorithm>
#include <mutex>
#include <utility>
#include <vector>

namespace sojourn::sandbox::image {
namespace {

// Buffers kept for reuse: enough for the sealings and restores a node runs at once; one given
// back beyond that is freed.
constexpr std::size_t kKeptBuffers = 8;

struct Idle {
  std::unique_ptr<std::uint8_t[]> data;
  std::size_t capacity = 0;
};

struct List {
  std::mutex mutex;
  std::vector<Idle> idle;
};

List& list() {
  static List* l = new List();  // never destroyed: a helper thread may give a buffer back late
  return *l;
}

}  // namespace

Scratch::Scratch(std::size_t bytes) : size_(bytes) {
  {
    List& l = list();
    std::lock_guard lock(l.mutex);
    // The smallest that fits: a large buffer stays for the callers that need it.
    auto best = l.idle.end();
    for (auto it = l.idle.begin(); it != l.idle.end(); ++it) {
      if (it->capacity >= bytes && (best == l.idle.end() || it->capacity < best->capacity)) best = it;
    }
    if (best != l.idle.end()) {
      data_ = std::move(best->data);
      capacity_ = best->capacity;
      l.idle.erase(best);
      return;
    }
  }
  capacity_ = std::max<std::size_t>(bytes, 1);
  data_.reset(new std::uint8_t[capacity_]);  // default-initialised: no zero-fill
}

Scratch::~Scratch() {
  if (!data_) return;
  List& l = list();
  std::lock_guard lock(l.mutex);
  if (l.idle.size() < kKeptBuffers) {
    l.idle.push_back(Idle{std::move(data_), capacity_});
    return;
  }
  // Full: the smallest goes (this one, or one kept before).
  auto smallest = std::min_element(l.idle.begin(), l.idle.end(),
                                   [](const Idle& a, const Idle& b) { return a.capacity < b.capacity; });
  if (smallest->capacity < capacity_) *smallest = Idle{std::move(data_), capacity_};
}

std::size_t Scratch::idle() {
  List& l = list();
  std::lock_guard lock(l.mutex);
  return l.idle.size();
}

}  // namespace sojourn::sandbox::image
