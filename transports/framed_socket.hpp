// Internal: a TCP or TLS connection that reads whole frames and writes queued frames with
// at most one write in progress (so writes never interleave). Used by both ends of a
// connection. Asio's SSL stream is only declared here: its header stays in the .cpp files.
#pragma once

#include <array>
#include <deque>
#include <chrono>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "sojourn/core/frame.hpp"
#include "sojourn/core/peer.hpp"
#include "sojourn/transports/link_model.hpp"
#include "transports/asio_full.hpp"
#include "transports/read_budget.hpp"

namespace boost::asio::ssl {
template <typename Stream>
class stream;
}  // namespace boost::asio::ssl

namespace sojourn {
class TlsContext;
}  // namespace sojourn

namespace sojourn::transport_detail {

using tcp = asio::ip::tcp;
using TlsStream = asio::ssl::stream<tcp::socket>;

// Is this a fault in what the peer sent (as opposed to the connection going away)?
bool is_protocol_error(Errc code);

class FramedSocket : public std::enable_shared_from_this<FramedSocket> {
 public:
  FramedSocket(tcp::socket socket, std::uint32_t max_payload, std::chrono::milliseconds frame_timeout,
               std::string peer_name);
  // A TLS connection: handshake() must succeed before frames are read or sent.
  FramedSocket(tcp::socket socket, std::shared_ptr<const TlsContext> tls, bool server_side, std::uint32_t max_payload,
               std::chrono::milliseconds frame_timeout, std::string peer_name);
  ~FramedSocket();

  // TLS: authenticates the peer (both ways) within `timeout`; returns who it is.
  // A server first looks at the first bytes: a plain sojourn client gets a protocol_error
  // frame that says to use TLS. Errors: untrusted_peer, refused_by_peer, tls_handshake_failed.
  asio::awaitable<Result<PeerIdentity>> handshake(std::chrono::milliseconds timeout);
  // After a refused handshake: lets the alert reach the peer before closing (a close with
  // unread bytes would reset the connection and lose it).
  void close_after_refusal();

  // Reads the next frame. What it is charged for grows as its bytes arrive, never to the
  // length a header merely declares; once the free part has come, its payload is reserved
  // at its final size (pages are touched only as bytes arrive). Errors: the parse_header
  // codes for a bad header, truncated for a frame cut off by the peer or not completed within the frame
  // timeout, overloaded when the read budget (if set) cannot hold the bytes that came,
  // connection_closed otherwise.
  asio::awaitable<Result<Frame>> read_frame();
  // A frame that lies whole in the read buffer already (under load one read brings many),
  // its payload where it lies: valid until the next read_frame(). Taken without a coroutine
  // and without a copy. nullopt when less than a whole frame is buffered (read_frame() then
  // reads it); a bad header is the error read_frame() would give, with nothing taken.
  struct BufferedFrame {
    FrameHeader header;
    std::span<const std::uint8_t> payload;
  };
  std::optional<Result<BufferedFrame>> next_buffered();
  // The frame as read_frame() gives it: its payload copied into a kept small buffer.
  Frame to_frame(const BufferedFrame& buffered);
  // The next frame if it is buffered whole (next_buffered() then to_frame()).
  std::optional<Result<Frame>> next_buffered_frame();
  // Bytes read and not yet taken.
  std::size_t buffered_bytes() const { return read_end_ - read_begin_; }
  // Between frames, with nothing buffered: waits for whatever bytes come next, without a
  // coroutine of read_frame() or fill() (a sequential peer's next frame then usually lies
  // whole in the buffer, for next_buffered()). As in read_frame(), replies held go out
  // first and idle time between frames is not limited. Not a coroutine: the awaitable is
  // the socket's read itself; its count goes to took(), which says whether the stream
  // went on. False, `ec` set, if it ended: ended_between_frames(ec) is then the error
  // read_frame() gives for it.
  asio::awaitable<std::size_t> read_more(boost::system::error_code& ec);
  bool took(std::size_t n, const boost::system::error_code& ec) {
    read_end_ += n;
    return !ec;
  }
  Error ended_between_frames(const boost::system::error_code& ec) const;
  // A server's connections share one budget for the frames they are reading.
  void set_read_budget(std::shared_ptr<ReadBudget> budget) { budget_ = std::move(budget); }
  // Queues a frame; dropped if the socket is closing.
  void send(std::vector<std::uint8_t> bytes);
  // Queues a frame made of a header and `payload`, written together without copying the
  // payload into a frame buffer first.
  void send_frame(FrameKind kind, std::uint64_t request_id, std::vector<std::uint8_t> payload);
  // An emulated link (experiments): each frame is held until the shaper says it arrives.
  void set_shaper(std::shared_ptr<LinkShaper> shaper);
  // Frames queued while the reader works through the frames one read brought (a server's
  // replies to pipelined requests; a client's next requests, sent by the callers its
  // replies resumed in place) are held and leave together in one gathered write, just
  // before the reader waits on the socket again. Whoever makes the reader wait elsewhere
  // calls flush() first.
  void batch_while_reading(bool on) { batch_ = on; }
  // A client's connection (plain TCP): a write the socket takes at once is made at once,
  // by one non-blocking sendmsg, and ends without a posted completion (a handler and a poll
  // of the reactor less per request). Not for a server's connection: a reply sent at once
  // in the middle of a burst of reads would leave alone instead of gathered.
  void write_directly(bool on) { write_directly_ = on && !tls_; }
  // Starts writing what is held (batch_while_reading); a no-op otherwise. `now` (plain
  // TCP): what the socket takes at once is written by one non-blocking sendmsg and the
  // write ends here, as with write_directly (the caller is about to wait, so nothing
  // more would join the write).
  void flush(bool now = false);
  // Writes what is queued, then closes.
  void close_after_flush();
  // Closes now; pending reads and writes end with errors.
  void close();
  // Stops reading: a pending read ends as if the peer had closed.
  void shutdown_receive();

  asio::any_io_executor executor() { return executor_; }
  const std::string& peer_name() const { return peer_name_; }
  std::uint64_t frames_sent() const { return frames_sent_; }

 private:
  static constexpr std::size_t kReadBufferBytes = 64 * 1024;
  static constexpr std::size_t kFreePayloadBytes = 64 * 1024;  // of each frame, not charged to the budget
  static constexpr std::size_t kPackedPayloadBytes = 2048;     // a payload up to this is copied, not pointed to
  static constexpr std::size_t kKeptPackedBytes = 16 * 1024;    // the packed buffer a connection keeps between writes
  // Small frames' buffers a connection keeps from the frames it wrote, for the payloads of
  // the frames it reads next (a reply written becomes the next request's payload): at most
  // kSparePayloads of at most kSparePayloadBytes each, so an idle connection holds little.
  static constexpr std::size_t kSparePayloads = 64;
  static constexpr std::size_t kSparePayloadBytes = 256;
  // `now`: try a direct sendmsg first even without write_directly (plain TCP only).
  void write_queued(bool now = false);
  // write_directly: sends what it can of write_buffers_ now; true if all of it went (the
  // write is then done), false with the buffers advanced past what went otherwise.
  bool send_now();
  // The end of a write: counts it, frees its buffers, starts the next or closes.
  void write_done(boost::system::error_code ec);
  void release_due();
  bool flushed() const { return !writing_ && delayed_.empty() && queue_.empty(); }
  // Writes now unless the reader is working through buffered frames (batch_while_reading).
  void write_soon() {
    if (!writing_ && !holding_) write_queued();
  }
  void arm_frame_timer();
  void disarm_frame_timer();
  Error incomplete(std::size_t have, std::size_t of, const char* part) const;
  // Reads until `wanted` bytes are buffered; false (and ec set) if the stream ended first.
  // Within a frame (`mid_frame`, or bytes of it buffered) the frame timer runs.
  asio::awaitable<bool> fill(std::size_t wanted, boost::system::error_code& ec, bool mid_frame = false);
  // Moves the buffered bytes of a payload into it, growing its charge as they come.
  Result<void> take_buffered(std::vector<std::uint8_t>& payload, std::size_t length, BudgetCharge& charge);

  tcp::socket& lowest();
  // Is ec a TLS alert that refuses our certificate? Then the read's error is that.
  std::optional<Error> tls_read_error(const boost::system::error_code& ec) const;
  asio::awaitable<bool> refuse_plain_client();
  asio::awaitable<void> drain_then_close();

  asio::any_io_executor executor_;
  tcp::socket socket_;                // plain TCP (unused when tls_ is set)
  std::unique_ptr<TlsStream> tls_;    // TLS over the socket
  std::shared_ptr<const TlsContext> tls_context_;
  bool server_side_ = false;
  asio::steady_timer frame_timer_;
  std::chrono::milliseconds frame_timeout_;
  std::optional<std::chrono::steady_clock::time_point> frame_deadline_;
  bool frame_timed_out_ = false;
  std::uint64_t frame_timer_generation_ = 0;
  struct Outgoing {
    std::array<std::uint8_t, kFrameHeaderSize> header{};
    bool has_header = false;          // else `bytes` is the whole frame
    std::vector<std::uint8_t> bytes;  // the payload, or the whole frame
  };
  std::deque<Outgoing> queue_;     // waiting for the next write
  std::deque<Outgoing> in_write_;  // owned by the write in progress
  std::vector<asio::const_buffer> write_buffers_;
  std::vector<std::uint8_t> write_packed_;  // headers and small payloads of the write in progress
  bool writing_ = false;
  bool batch_ = false;    // batch_while_reading
  bool holding_ = false;  // the reader is working through frames: writes wait for flush()
  bool write_directly_ = false;
  struct Delayed {
    std::chrono::steady_clock::time_point at;
    std::vector<std::uint8_t> bytes;
  };
  std::shared_ptr<LinkShaper> shaper_;           // null: frames go out at once
  std::deque<Delayed> delayed_;                  // held by the emulated link, in order
  std::unique_ptr<asio::steady_timer> release_timer_;
  // Allocated at the first read, never zero-filled: an idle connection holds none of it.
  std::unique_ptr<std::uint8_t[]> read_buffer_;
  std::vector<std::vector<std::uint8_t>> spare_payloads_;  // empty, of small capacity (kSparePayloads)
  std::size_t read_begin_ = 0, read_end_ = 0;
  std::shared_ptr<ReadBudget> budget_;
  std::size_t frame_charged_ = 0;  // the capacity the frame being read is charged for
  std::uint32_t max_payload_;
  std::string peer_name_;
  bool closing_ = false;
  bool closed_ = false;
  std::uint64_t frames_sent_ = 0;
};

// Logs an exception that escaped a coroutine; for co_spawn completion handlers.
void log_coroutine_exit(const char* what, std::exception_ptr e);

}  // namespace sojourn::transport_detail
