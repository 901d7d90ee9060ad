// The heap image's payload codecs (image_codec.hpp). Each keeps its contexts per thread between
// images: fresh ones allocate their tables and windows again, and those pages are faulted in
// again on every image, a large share of a small image's cost.
#include "sandbox/image/image_codec.hpp"

#include <lz4frame.h>
#include <zstd.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace sojourn::sandbox::image::detail {

namespace {

// Fast levels: imaging sits on the agent's path between two nodes.
constexpr int kZstdLevel = 1;
// Encoded output is handed on in pieces of at most this size, each while it is in the cache.
constexpr std::size_t kOutPiece = 256 * 1024;

std::span<std::uint8_t> out_buffer() {
  thread_local std::vector<std::uint8_t> buffer(kOutPiece);
  return buffer;
}

// ---- stored: the payload as it is (for a link faster than any codec).

class StoredEncoder final : public Encoder {
 public:
  using Encoder::feed;
  bool feed(std::span<const std::uint8_t> bytes, const Sink& sink) override {
    if (!bytes.empty()) sink(bytes);
    return true;
  }
  bool end(const Sink&) override { return true; }
  std::uint64_t bound(std::uint64_t payload_bytes) const override { return payload_bytes; }
  std::string why() const override { return {}; }
};

class StoredDecoder final : public Decoder {
 public:
  explicit StoredDecoder(std::span<const std::uint8_t> packed) : packed_(packed) {}
  bool fill(std::uint8_t* to, std::size_t n) override {
    if (n > packed_.size() - at_) return false;
    std::memcpy(to, packed_.data() + at_, n);
    at_ += n;
    return true;
  }
  bool ends_here() override { return at_ == packed_.size(); }
  std::string why() const override { return "short"; }

 private:
  std::span<const std::uint8_t> packed_;
  std::size_t at_ = 0;
};

// ---- zstd (level 1): the best ratio of the three, the slowest.

class ZstdEncoder final : public Encoder {
 public:
  explicit ZstdEncoder(std::uint64_t payload_bytes) {
    thread_local std::unique_ptr<ZSTD_CCtx, decltype(&ZSTD_freeCCtx)> cctx(ZSTD_createCCtx(), &ZSTD_freeCCtx);
    // The pledged size puts the payload's size in the frame header.
    if (cctx && !ZSTD_isError(ZSTD_CCtx_reset(cctx.get(), ZSTD_reset_session_and_parameters)) &&
        !ZSTD_isError(ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_compressionLevel, kZstdLevel)) &&
        !ZSTD_isError(ZSTD_CCtx_setPledgedSrcSize(cctx.get(), payload_bytes))) {
      cctx_ = cctx.get();
    }
  }
  bool ready() const { return cctx_ != nullptr; }
  using Encoder::feed;
  bool feed(std::span<const std::uint8_t> bytes, const Sink& sink) override { return run(bytes, ZSTD_e_continue, sink); }
  bool end(const Sink& sink) override { return run({}, ZSTD_e_end, sink); }
  std::uint64_t bound(std::uint64_t payload_bytes) const override { return ZSTD_compressBound(payload_bytes); }
  std::string why() const override { return ZSTD_getErrorName(failed_); }

 private:
  bool run(std::span<const std::uint8_t> bytes, ZSTD_EndDirective mode, const Sink& sink) {
    const std::span<std::uint8_t> piece = out_buffer();
    ZSTD_inBuffer in{bytes.data(), bytes.size(), 0};
    for (;;) {
      ZSTD_outBuffer out{piece.data(), piece.size(), 0};
      const std::size_t left = ZSTD_compressStream2(cctx_, &out, &in, mode);
      if (ZSTD_isError(left)) {
        failed_ = left;
        return false;
      }
      if (out.pos != 0) sink(std::span<const std::uint8_t>(piece.data(), out.pos));
      if (mode == ZSTD_e_end ? left == 0 : in.pos == in.size) return true;
    }
  }
  ZSTD_CCtx* cctx_ = nullptr;  // the thread's, reset for this image
  std::size_t failed_ = 0;
};

using DCtxPtr = std::unique_ptr<ZSTD_DCtx, decltype(&ZSTD_freeDCtx)>;

// One decompression context kept per thread between images: a decoder borrows it, reset
// (nothing of the last image's frame is left), and gives it back when it ends; a second decoder
// alive on the same thread gets a context of its own. One that grew past kKeptDCtxBytes for a
// large image is let go rather than held by the thread.
constexpr std::size_t kKeptDCtxBytes = 8u << 20;
DCtxPtr& spare_dctx() {
  thread_local DCtxPtr spare{nullptr, &ZSTD_freeDCtx};
  return spare;
}

class ZstdDecoder final : public Decoder {
 public:
  explicit ZstdDecoder(std::span<const std::uint8_t> packed) : in_{packed.data(), packed.size(), 0} {
    dctx_ = std::move(spare_dctx());
    if (dctx_ && ZSTD_isError(ZSTD_DCtx_reset(dctx_.get(), ZSTD_reset_session_and_parameters))) dctx_.reset();
    if (!dctx_) dctx_ = DCtxPtr(ZSTD_createDCtx(), &ZSTD_freeDCtx);
  }
  ~ZstdDecoder() override {
    if (dctx_ && !spare_dctx() && ZSTD_sizeof_DCtx(dctx_.get()) <= kKeptDCtxBytes) spare_dctx() = std::move(dctx_);
  }
  ZstdDecoder(const ZstdDecoder&) = delete;
  ZstdDecoder& operator=(const ZstdDecoder&) = delete;
  bool ready() const { return dctx_ != nullptr; }
  bool fill(std::uint8_t* to, std::size_t n) override {
    ZSTD_outBuffer out{to, n, 0};
    while (out.pos < out.size) {
      const std::size_t in_before = in_.pos, out_before = out.pos;
      const std::size_t r = ZSTD_decompressStream(dctx_.get(), &out, &in_);
      if (ZSTD_isError(r)) {
        failed_ = r;
        return false;
      }
      last_ = r;
      if (in_.pos == in_before && out.pos == out_before) return false;
    }
    return true;
  }
  bool ends_here() override {
    // The frame must end exactly there (zstd also checks the declared size at its end).
    if (last_ != 0) {
      std::uint8_t extra = 0;
      ZSTD_outBuffer tail{&extra, 1, 0};
      last_ = ZSTD_decompressStream(dctx_.get(), &tail, &in_);
      if (tail.pos != 0) last_ = 1;
    }
    return !ZSTD_isError(last_) && last_ == 0 && in_.pos == in_.size;
  }
  std::string why() const override { return failed_ != 0 ? ZSTD_getErrorName(failed_) : "short"; }

 private:
  DCtxPtr dctx_{nullptr, &ZSTD_freeDCtx};
  ZSTD_inBuffer in_;
  std::size_t failed_ = 0;
  std::size_t last_ = 1;  // ZSTD_decompressStream's last answer: 0 once the frame is complete
};

// ---- LZ4 frames: a few times zstd's speed each way for a lower ratio. The encoder is in
// lz4_blocks.cpp; the decoder reads any LZ4 frame (linked or independent blocks) that declares
// the payload's size.

struct Lz4DCtxFree {
  void operator()(LZ4F_dctx* d) const { LZ4F_freeDecompressionContext(d); }
};

using Lz4DCtxPtr = std::unique_ptr<LZ4F_dctx, Lz4DCtxFree>;
Lz4DCtxPtr& spare_lz4_dctx() {  // as spare_dctx: borrowed, reset, given back
  thread_local Lz4DCtxPtr spare;
  return spare;
}

class Lz4Decoder final : public Decoder {
 public:
  explicit Lz4Decoder(std::span<const std::uint8_t> packed) : packed_(packed) {
    dctx_ = std::move(spare_lz4_dctx());
    if (dctx_) {
      LZ4F_resetDecompressionContext(dctx_.get());  // nothing of the thread's last frame is left
    } else {
      LZ4F_dctx* d = nullptr;
      if (!LZ4F_isError(LZ4F_createDecompressionContext(&d, LZ4F_VERSION))) dctx_.reset(d);
    }
  }
  ~Lz4Decoder() override {
    if (dctx_ && !spare_lz4_dctx()) spare_lz4_dctx() = std::move(dctx_);
  }
  Lz4Decoder(const Lz4Decoder&) = delete;
  Lz4Decoder& operator=(const Lz4Decoder&) = delete;
  bool ready() const { return dctx_ != nullptr; }
  // The frame header's declared content size (0: none), reading only that header.
  std::uint64_t declared() {
    LZ4F_frameInfo_t info;
    std::size_t consumed = packed_.size();
    const std::size_t r = LZ4F_getFrameInfo(dctx_.get(), &info, packed_.data(), &consumed);
    if (LZ4F_isError(r)) {
      failed_ = r;
      return 0;
    }
    at_ = consumed;
    last_ = r;
    return info.contentSize;
  }
  bool fill(std::uint8_t* to, std::size_t n) override {
    std::size_t done = 0;
    while (done < n) {
      std::size_t out = n - done;
      std::size_t in = packed_.size() - at_;
      const std::size_t r = LZ4F_decompress(dctx_.get(), to + done, &out, packed_.data() + at_, &in, nullptr);
      if (LZ4F_isError(r)) {
        failed_ = r;
        return false;
      }
      last_ = r;
      at_ += in;
      done += out;
      if (in == 0 && out == 0) return false;
    }
    return true;
  }
  bool ends_here() override {
    // The frame must end exactly there (LZ4F checks the declared content size at its end).
    if (last_ != 0) {
      std::uint8_t extra = 0;
      std::size_t out = 1;
      std::size_t in = packed_.size() - at_;
      const std::size_t r = LZ4F_decompress(dctx_.get(), &extra, &out, packed_.data() + at_, &in, nullptr);
      at_ += in;
      last_ = LZ4F_isError(r) || out != 0 ? 1 : r;
    }
    return last_ == 0 && at_ == packed_.size();
  }
  std::string why() const override { return failed_ != 0 ? LZ4F_getErrorName(failed_) : "short"; }

 private:
  std::span<const std::uint8_t> packed_;
  Lz4DCtxPtr dctx_;
  std::size_t at_ = 0;
  std::size_t failed_ = 0;
  std::size_t last_ = 1;  // LZ4F_decompress's last hint: 0 once the frame is complete
};

}  // namespace

std::unique_ptr<Encoder> make_encoder(Codec codec, std::uint64_t payload_bytes) {
  switch (codec) {
    case Codec::stored:
      return std::make_unique<StoredEncoder>();
    case Codec::zstd: {
      auto e = std::make_unique<ZstdEncoder>(payload_bytes);
      return e->ready() ? std::move(e) : nullptr;
    }
    case Codec::lz4:
      return make_lz4_encoder(payload_bytes);
  }
  return nullptr;
}

std::unique_ptr<Decoder> make_decoder(Codec codec, std::span<const std::uint8_t> packed, std::uint64_t payload_bytes,
                                      std::string& why, bool& internal) {
  const std::string undeclared = "the compressed payload does not declare the header's size";
  switch (codec) {
    case Codec::stored:
      if (packed.size() != payload_bytes) {
        why = "the stored payload of " + std::to_string(packed.size()) + " bytes is not the header's " +
              std::to_string(payload_bytes);
        return nullptr;
      }
      return std::make_unique<StoredDecoder>(packed);
    case Codec::zstd: {
      if (ZSTD_getFrameContentSize(packed.data(), packed.size()) != payload_bytes) {
        why = undeclared;
        return nullptr;
      }
      auto d = std::make_unique<ZstdDecoder>(packed);
      if (d->ready()) return d;
      why = "zstd: cannot set up a decompression context";
      internal = true;
      return nullptr;
    }
    case Codec::lz4: {
      auto d = std::make_unique<Lz4Decoder>(packed);
      if (!d->ready()) {
        why = "lz4: cannot set up a decompression context";
        internal = true;
        return nullptr;
      }
      // A frame that declares no size reads as 0: it matches only an empty payload.
      if (d->declared() != payload_bytes) {
        why = undeclared;
        return nullptr;
      }
      return d;
    }
  }
  why = "unknown codec";
  return nullptr;
}

}  // namespace sojourn::sandbox::image::detail
