// The heap image's LZ4 encoder (image_codec.hpp): one LZ4 frame of independent blocks, written
// block by block with the raw block compressor so that the blocks of a piece can be compressed
// on two cores at once. Sealing a large heap is the longest part of a strong hop's stop, and
// one core compressed it all (LZ4 at ~0.5 GB/s: ~200 ms for 64 MB of heap).
//
// The frame is a standard one (frame header from LZ4F_compressBegin, blocks of at most
// kBlock bytes, each a 4-byte little-endian size, high bit set when stored as it is, then the
// end mark): any LZ4 frame decoder reads it, this node's included, and it declares the payload's
// size exactly as before. Independent blocks lose only the matches a block could have found in
// the last 64 KB of the one before.
#include <lz4.h>
#include <lz4frame.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "sandbox/image/image_codec.hpp"
#include "sandbox/image/scratch.hpp"

namespace sojourn::sandbox::image::detail {

namespace {

// The largest block: 256 KB keeps the lost history small (a match reaches back 64 KB at most)
// and lets the destination's decoder write 1 MB pieces straight to their place.
constexpr std::size_t kBlock = 256 * 1024;
constexpr LZ4F_blockSizeID_t kBlockId = LZ4F_max256KB;
// LZ4's acceleration (1: its default ratio). Heaps are compressed once per hop and the link is
// rarely slower than the codec, but the ratio still pays on a slow one: kept at the default.
constexpr int kAcceleration = 1;
constexpr std::uint32_t kStoredBit = 0x80000000u;
// A piece smaller than this is compressed on the calling thread alone: waking a second one
// costs more than it saves.
constexpr std::size_t kSplitFrom = 2 * kBlock;

void put_le32(std::uint8_t* at, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) at[i] = static_cast<std::uint8_t>(v >> (8 * i));
}

// A block is written as one or more frame blocks: its runs of parts LZ4 can shrink are compressed,
// its runs of parts LZ4 would barely shrink (a heap's strings of random digits, compressed or
// encrypted bytes: ~2% for ~2 ms per MB) are stored as they are, which a frame allows block by
// block. A block that is compressible throughout is written exactly as before.
constexpr std::size_t kPart = 64 * 1024;  // the unit of that choice
constexpr std::size_t kPartsPerBlock = kBlock / kPart;
// A part is probed by compressing pieces of kProbe bytes, one every kProbeStep, each alone;
// the first that shrinks below kProbeKeeps sixteenths of its size marks the part compressible.
// Probing costs about 1/8 of compressing a part that stores, 1/64 of one that compresses.
constexpr std::size_t kProbe = 1024;
constexpr std::size_t kProbeStep = 8 * 1024;
constexpr std::size_t kProbeKeeps = 15;

// Whether LZ4 is likely to shrink `part` by more than about 1/16.
bool worth_compressing(std::span<const std::uint8_t> part, char* state) {
  if (part.size() < kProbe) return true;  // too short to probe: as before
  char out[LZ4_COMPRESSBOUND(kProbe)];
  for (std::size_t at = 0; at + kProbe <= part.size(); at += kProbeStep) {
    const int n = LZ4_compress_fast_extState(state, reinterpret_cast<const char*>(part.data() + at), out,
                                             static_cast<int>(kProbe), static_cast<int>(sizeof out), kAcceleration);
    if (n <= 0 || static_cast<std::size_t>(n) * 16 < kProbe * kProbeKeeps) return true;
  }
  return false;
}

// What a block was written as: its frame blocks in order, each the bytes at [at, at + len) of
// its slot, then, for a stored one, the block's own bytes (not copied into the slot: the sink
// hashes and appends them from where they lie, which outlives the batch).
struct Written {
  struct Run {
    std::size_t at = 0, len = 0;
    std::span<const std::uint8_t> stored;
  };
  Run runs[kPartsPerBlock];
  std::size_t count = 0;
};

// Writes `bytes` as one frame block at `out` (room for 4 + its size) and records it in `w`:
// compressed when `pack` and that shrinks them, else stored (its size word only in the slot);
// returns the slot's bytes written.
std::size_t write_block(std::span<const std::uint8_t> bytes, bool pack, char* state, std::uint8_t* slot,
                        std::size_t at, Written& w) {
  const int n = static_cast<int>(bytes.size());
  std::uint8_t* out = slot + at;
  Written::Run& run = w.runs[w.count++];
  run.at = at;
  if (pack) {
    // At most n - 1 bytes: a block that does not shrink is stored as it is (as LZ4F does).
    const int packed = LZ4_compress_fast_extState(state, reinterpret_cast<const char*>(bytes.data()),
                                                  reinterpret_cast<char*>(out + 4), n, n - 1, kAcceleration);
    if (packed > 0) {
      put_le32(out, static_cast<std::uint32_t>(packed));
      run.len = 4 + static_cast<std::size_t>(packed);
      return run.len;
    }
  }
  put_le32(out, static_cast<std::uint32_t>(n) | kStoredBit);
  run.len = 4;
  run.stored = bytes;
  return run.len;
}

// Writes one block (at most kBlock bytes) into `slot` (room for kSlot bytes) as the frame
// blocks above, recorded in `w`.
void compress_block(std::span<const std::uint8_t> block, std::uint8_t* slot, Written& w) {
  thread_local std::vector<char> state(static_cast<std::size_t>(LZ4_sizeofState()));
  const auto part = [&](std::size_t at) { return block.subspan(at, std::min(kPart, block.size() - at)); };
  w.count = 0;
  std::size_t written = 0;
  std::size_t at = 0;
  bool pack = worth_compressing(part(0), state.data());
  while (at < block.size()) {
    std::size_t end = std::min(block.size(), at + kPart);
    bool next = pack;
    while (end < block.size() && (next = worth_compressing(part(end), state.data())) == pack) {
      end = std::min(block.size(), end + kPart);
    }
    written += write_block(block.subspan(at, end - at), pack, state.data(), slot, written, w);
    at = end;
    pack = next;
  }
}

// Hands a written block on to the sink, in the frame's order.
void hand_on(const std::uint8_t* slot, const Written& w, const Sink& sink) {
  for (std::size_t i = 0; i < w.count; ++i) {
    sink(std::span<const std::uint8_t>(slot + w.runs[i].at, w.runs[i].len));
    if (!w.runs[i].stored.empty()) sink(w.runs[i].stored);
  }
}

// A batch of blocks two threads compress together: each claims the next block by a shared
// counter and writes it into that block's slot, so that neither waits for blocks the other
// has not claimed (on a loaded machine the helper may start late, or not at all).
constexpr std::size_t kBatch = 8;
constexpr std::size_t kSlot = kBlock + 4 * kPartsPerBlock;  // a block split at every part, at worst
struct Batch {
  std::span<const std::span<const std::uint8_t>> blocks;
  std::uint8_t* slots = nullptr;  // kSlot bytes per block
  Written written[kBatch];
  std::atomic<bool> done[kBatch] = {};
  std::atomic<std::size_t> next{0};

  // Claims and compresses blocks until none is left.
  void work() {
    for (std::size_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < blocks.size();) {
      compress_block(blocks[i], slots + i * kSlot, written[i]);
      done[i].store(true, std::memory_order_release);
    }
  }
};

// One helper thread per process, lent to one sealing at a time (another sealing meanwhile
// compresses alone). Started at the first large image; never stopped (it sleeps between
// images). Not lent in a child forked after it started: the child has no such thread.
class Helper {
 public:
  static Helper* lend() {
    static Helper* helper = new Helper();  // never destroyed: its thread may outlive main's statics
    if (helper->pid_ != ::getpid()) return nullptr;
    return helper->owner_.try_lock() ? helper : nullptr;
  }
  // Asks the helper thread to work on `batch` too.
  void start(Batch* batch) {
    std::lock_guard lock(mutex_);
    batch_ = batch;
    busy_ = false;
    wake_.notify_one();
  }
  // Once the batch has no block left to claim: takes it back if the helper never picked it up,
  // or waits for the helper to leave it (it holds at most the block it is compressing). The
  // batch may go once this returns; then the helper is free for another sealing.
  void finish() {
    std::unique_lock lock(mutex_);
    batch_ = nullptr;
    left_.wait(lock, [&] { return !busy_; });
    lock.unlock();
    owner_.unlock();
  }

 private:
  Helper() : pid_(::getpid()) { std::thread([this] { loop(); }).detach(); }
  void loop() {
    for (;;) {
      Batch* batch = nullptr;
      {
        std::unique_lock lock(mutex_);
        wake_.wait(lock, [&] { return batch_ != nullptr; });
        batch = batch_;
        batch_ = nullptr;
        busy_ = true;
      }
      batch->work();
      std::lock_guard lock(mutex_);
      busy_ = false;
      left_.notify_one();
    }
  }
  const pid_t pid_;
  std::mutex owner_;  // held by the sealing the helper is lent to
  std::mutex mutex_;
  std::condition_variable wake_, left_;
  Batch* batch_ = nullptr;  // offered, not yet picked up
  bool busy_ = false;       // working on a batch
};

LZ4F_preferences_t preferences(std::uint64_t payload_bytes) {
  LZ4F_preferences_t prefs;
  std::memset(&prefs, 0, sizeof prefs);
  prefs.frameInfo.blockSizeID = kBlockId;
  prefs.frameInfo.blockMode = LZ4F_blockIndependent;
  prefs.frameInfo.contentSize = payload_bytes;  // no content or block checksums: the image's hash covers it
  return prefs;
}

class Lz4BlockEncoder final : public Encoder {
 public:
  explicit Lz4BlockEncoder(std::uint64_t payload_bytes) : prefs_(preferences(payload_bytes)) {
    thread_local std::unique_ptr<LZ4F_cctx, decltype(&LZ4F_freeCompressionContext)> cctx = [] {
      LZ4F_cctx* c = nullptr;
      return std::unique_ptr<LZ4F_cctx, decltype(&LZ4F_freeCompressionContext)>(
          LZ4F_isError(LZ4F_createCompressionContext(&c, LZ4F_VERSION)) ? nullptr : c, &LZ4F_freeCompressionContext);
    }();
    if (!cctx) return;
    // Only the frame header is taken from LZ4F: the blocks are written here.
    const std::size_t n = LZ4F_compressBegin(cctx.get(), header_, sizeof header_, &prefs_);
    if (LZ4F_isError(n)) {
      failed_ = n;
      return;
    }
    header_bytes_ = n;
    ready_ = true;
  }
  bool ready() const { return ready_; }

  bool feed(std::span<const std::uint8_t> bytes, const Sink& sink) override { return feed_blocks(bytes, sink, nullptr); }
  bool feed(std::span<const std::uint8_t> bytes, const Sink& sink, const std::function<void()>& meanwhile) override {
    return feed_blocks(bytes, sink, &meanwhile);
  }

  bool end(const Sink& sink) override {
    flush_header(sink);
    if (pending_n_ != 0) {
      const std::span<const std::uint8_t> last = pending();
      compress(std::span(&last, 1), sink, nullptr);
      pending_n_ = 0;
    }
    static constexpr std::uint8_t kEndMark[4] = {0, 0, 0, 0};
    sink(kEndMark);
    return true;
  }

  std::uint64_t bound(std::uint64_t payload_bytes) const override {
    // Every block at worst stored as it is, behind its size word, and the header and end mark.
    // A short block is the gathered tail flushed ahead of a large piece, which itself gives at
    // least one whole block, or the last one: at most twice the whole blocks, plus one.
    // Each may be split at every part (compressed and stored runs).
    const std::uint64_t blocks = (2 * (payload_bytes / kBlock + 1) + 1) * kPartsPerBlock;
    return payload_bytes + 4 * blocks + sizeof header_ + 4;
  }
  std::string why() const override { return failed_ != 0 ? LZ4F_getErrorName(failed_) : "cannot set up a context"; }

 private:
  // feed; `meanwhile` (when given) runs once, on this thread, while the helper compresses.
  bool feed_blocks(std::span<const std::uint8_t> bytes, const Sink& sink, const std::function<void()>* meanwhile) {
    flush_header(sink);
    // Small pieces (a page map, short runs of pages) gather into one block; a large one is cut
    // into blocks where it lies, its tail kept for the next piece.
    if (pending_n_ + bytes.size() < kBlock) {
      gather(bytes);
      if (meanwhile != nullptr) (*meanwhile)();
      return true;
    }
    std::vector<std::span<const std::uint8_t>> blocks;
    if (bytes.size() < kBlock) {
      const std::size_t take = kBlock - pending_n_;
      gather(bytes.first(take));
      bytes = bytes.subspan(take);
      blocks.emplace_back(pending());
    } else if (pending_n_ != 0) {
      blocks.emplace_back(pending());  // a short block of its own: no copy of the large piece
    }
    while (bytes.size() >= kBlock) {
      blocks.push_back(bytes.first(kBlock));
      bytes = bytes.subspan(kBlock);
    }
    compress(blocks, sink, meanwhile);  // done with pending() when it returns
    pending_n_ = 0;
    gather(bytes);
    return true;
  }

  // Bytes short of a block, kept for the next ones.
  std::span<const std::uint8_t> pending() const { return pending_.bytes().first(pending_n_); }
  void gather(std::span<const std::uint8_t> bytes) {
    if (!bytes.empty()) std::memcpy(pending_.bytes().data() + pending_n_, bytes.data(), bytes.size());
    pending_n_ += bytes.size();
  }

  void flush_header(const Sink& sink) {
    if (header_bytes_ != 0) {
      sink(std::span<const std::uint8_t>(header_, header_bytes_));
      header_bytes_ = 0;
    }
  }

  // Compresses the blocks in order into the frame: the second half on the helper thread when
  // there is enough to share and the helper is free, the rest here.
  // `meanwhile` (when given) runs in the first batch, once the helper has it.
  void compress(std::span<const std::span<const std::uint8_t>> blocks, const Sink& sink,
                const std::function<void()>* meanwhile) {
    // In batches, so that the output buffers the threads keep stay small whatever the piece.
    for (std::size_t at = 0; at < blocks.size(); at += kBatch) {
      compress_batch(blocks.subspan(at, std::min(kBatch, blocks.size() - at)), sink, at == 0 ? meanwhile : nullptr);
    }
  }
  // One batch: both threads compress while this one hands the finished blocks on in order
  // (hashed and appended as they come).
  void compress_batch(std::span<const std::span<const std::uint8_t>> blocks, const Sink& sink,
                      const std::function<void()>* meanwhile) {
    const Scratch slots(blocks.size() * kSlot);  // reused across threads and images (scratch.hpp)
    Batch batch;
    batch.blocks = blocks;
    batch.slots = slots.bytes().data();
    std::size_t total = 0;
    for (auto b : blocks) total += b.size();
    Helper* helper = total >= kSplitFrom && blocks.size() >= 2 ? Helper::lend() : nullptr;
    if (helper != nullptr) helper->start(&batch);
    // The caller's side work (the next piece read) while the helper starts on the blocks; then
    // this thread claims what is left. Neither the blocks nor their order change.
    if (meanwhile != nullptr) (*meanwhile)();
    std::size_t handed = 0;
    const auto hand_on_done = [&] {
      for (; handed < blocks.size() && batch.done[handed].load(std::memory_order_acquire); ++handed) {
        hand_on(batch.slots + handed * kSlot, batch.written[handed], sink);
      }
    };
    for (std::size_t i; (i = batch.next.fetch_add(1, std::memory_order_relaxed)) < blocks.size();) {
      compress_block(blocks[i], batch.slots + i * kSlot, batch.written[i]);
      batch.done[i].store(true, std::memory_order_release);
      hand_on_done();
    }
    if (helper != nullptr) helper->finish();
    hand_on_done();
  }

  LZ4F_preferences_t prefs_;
  std::uint8_t header_[LZ4F_HEADER_SIZE_MAX] = {};
  std::size_t header_bytes_ = 0;
  bool ready_ = false;
  std::size_t failed_ = 0;
  // Bytes short of a block, compressed with the next ones: in a reused buffer (scratch.hpp), not
  // a fresh 256 KB one per image whose pages the kernel zeroes again as they are first written.
  Scratch pending_{kBlock};
  std::size_t pending_n_ = 0;
};

}  // namespace

std::unique_ptr<Encoder> make_lz4_encoder(std::uint64_t payload_bytes) {
  auto e = std::make_unique<Lz4BlockEncoder>(payload_bytes);
  return e->ready() ? std::move(e) : nullptr;
}

}  // namespace sojourn::sandbox::image::detail
