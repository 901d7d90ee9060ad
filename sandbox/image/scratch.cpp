#include "sandbox/image/scratch.hpp"

#include <algorithm>
#include <chrono>
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

namespace {

struct Kept {
  std::vector<std::uint8_t> buffer;
  std::chrono::steady_clock::time_point since;
};

struct KeptImage {
  std::mutex mutex;
  Kept large;  // kImageBufferMin or more
  // kSmallImageBufferMin up to kImageBufferMin: two, for an image sealed and one staged at once
  // (a node both sends and receives an agent's image in a round trip).
  Kept small[2];
};

KeptImage& kept_image() {
  static KeptImage* k = new KeptImage();  // never destroyed: an image may be let go late
  return *k;
}

// The kept buffer, out of the lock, when it waited too long (freed by the caller's destructor).
std::vector<std::uint8_t> expired_locked(Kept& k, std::chrono::steady_clock::time_point now) {
  if (k.buffer.capacity() == 0 || now - k.since < std::chrono::milliseconds(kImageBufferIdleMs)) return {};
  return std::exchange(k.buffer, {});
}

// Every kept buffer idle too long, moved into `old` (three: the large one, then the two
// mid-sized), for the caller to free after its lock.
void expire_all_locked(KeptImage& k, std::vector<std::uint8_t> (&old)[3]) {
  const auto now = std::chrono::steady_clock::now();
  old[0] = expired_locked(k.large, now);
  old[1] = expired_locked(k.small[0], now);
  old[2] = expired_locked(k.small[1], now);
}

// The slot to take a buffer of `bytes` from: the large one, or the mid-sized one holding the
// smallest buffer that fits; nullptr for none.
Kept* take_slot(KeptImage& k, std::size_t bytes) {
  if (bytes >= kImageBufferMin) return k.large.buffer.capacity() >= bytes ? &k.large : nullptr;
  if (bytes < kSmallImageBufferMin) return nullptr;
  Kept* best = nullptr;
  for (Kept& slot : k.small) {
    if (slot.buffer.capacity() >= bytes && (best == nullptr || slot.buffer.capacity() < best->buffer.capacity())) {
      best = &slot;
    }
  }
  return best;
}

// The slot to keep a buffer of `capacity` in: the large one, or an empty mid-sized one, else the
// one holding the smaller buffer; nullptr for one too small to keep.
Kept* give_slot(KeptImage& k, std::size_t capacity) {
  if (capacity >= kImageBufferMin) return &k.large;
  if (capacity < kSmallImageBufferMin) return nullptr;
  Kept* smallest = &k.small[0];
  for (Kept& slot : k.small) {
    if (slot.buffer.capacity() < smallest->buffer.capacity()) smallest = &slot;
  }
  return smallest;
}

}  // namespace

std::vector<std::uint8_t> take_image_buffer(std::size_t bytes) {
  KeptImage& k = kept_image();
  std::vector<std::uint8_t> out;
  std::vector<std::uint8_t> old[3];  // freed after the lock
  {
    std::lock_guard lock(k.mutex);
    expire_all_locked(k, old);
    if (Kept* slot = take_slot(k, bytes)) out = std::exchange(slot->buffer, {});
  }
  return out;
}

void give_image_buffer(std::vector<std::uint8_t> buffer) {
  KeptImage& k = kept_image();
  std::lock_guard lock(k.mutex);
  Kept* slot = give_slot(k, buffer.capacity());
  if (slot == nullptr) return;  // freed after the lock
  std::swap(slot->buffer, buffer);  // the one kept before is freed as `buffer` goes, after the lock
  slot->since = std::chrono::steady_clock::now();
}

void drop_idle_image_buffer() {
  KeptImage& k = kept_image();
  std::vector<std::uint8_t> old[3];  // freed after the lock
  std::lock_guard lock(k.mutex);
  expire_all_locked(k, old);
}

std::shared_ptr<const std::vector<std::uint8_t>> shared_image(std::vector<std::uint8_t> bytes) {
  auto* held = new std::vector<std::uint8_t>(std::move(bytes));
  return std::shared_ptr<const std::vector<std::uint8_t>>(held, [](const std::vector<std::uint8_t>* image) {
    std::unique_ptr<std::vector<std::uint8_t>> owned(const_cast<std::vector<std::uint8_t>*>(image));
    give_image_buffer(std::move(*owned));
  });
}

std::size_t kept_image_buffer() {
  KeptImage& k = kept_image();
  std::lock_guard lock(k.mutex);
  return k.large.buffer.capacity();
}

std::size_t kept_small_image_buffer() {
  KeptImage& k = kept_image();
  std::lock_guard lock(k.mutex);
  return std::max(k.small[0].buffer.capacity(), k.small[1].buffer.capacity());
}

}  // namespace sojourn::sandbox::image
