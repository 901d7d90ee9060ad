// Node: the runtime an application or the `sojourn node` daemon runs. It serves its
// services and Lua evaluations to peers, and calls and evaluates on peers. This
// header is the blocking API; node_async.hpp has the coroutine API.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <span>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "sojourn/agents/mobility.hpp"
#include "sojourn/core/error.hpp"
#include "sojourn/core/image_codec.hpp"
#include "sojourn/core/messages.hpp"
#include "sojourn/core/peer.hpp"
#include "sojourn/core/value.hpp"
#include "sojourn/transports/link_model.hpp"
#include "sojourn/transports/tls.hpp"

namespace sojourn {

class Policy;
class SigningKey;

// A C++ service. `args` is an array table of the caller's arguments. Services run
// concurrently on the node's worker threads (and from Lua code calling node.call):
// they must be thread-safe.
using Service = std::function<Result<Value>(const Value& args)>;
// A service that needs to know who calls: the peer's address and, over TLS, the identity
// its certificate proved (address "local" for this node's own code).
using PeerService = std::function<Result<Value>(const Value& args, const PeerIdentity& caller)>;

struct ServiceOptions {
  // Cheap, non-blocking services may run on the network thread and skip a thread hop.
  bool inline_on_network_thread = false;
  // Protocol services (agent hand-over, tracking) that peers call: Lua's node.call cannot.
  bool peers_only = false;
  // Read-only, its answer a function of its arguments and the node's state, and cheap (like
  // kv.get): the process jail may call it when a run starts and carry its answer into the
  // guest (docs/jails.md, "Carried reads"). Never set it on a service that changes anything.
  bool read_only = false;
};

// What a node with a data dir waits for before it acknowledges (docs/reliability.md).
// full: every acknowledged write is on disk (SQLite synchronous=FULL): a crash of the
// process or of the machine loses nothing acknowledged. normal (synchronous=NORMAL in WAL
// mode): faster; a crash of the process loses nothing, a power loss or an OS crash may lose
// the writes of the last moments.
enum class Durability { full, normal };

struct NodeOptions {
  std::string name = "node";
  // Mutual TLS for every TCP connection, served and made (see docs/tls.md): set `tls.dir`
  // and this node listens and connects only over TLS, proving its identity and checking
  // each peer's. Empty: plain TCP, for loopback development. `tls.peers` (address ->
  // identity) binds addresses to the identities expected there, and names the configured
  // peers this node's agents may go to by default (docs/security.md, "Where agents may go").
  TlsConfig tls;
  // Plain TCP on a non-loopback address is refused unless this is set (`--insecure`).
  bool insecure_plain_tcp = false;
  // "HOST:PORT": the read-only dashboard, /metrics and JSON API (`--http`,
  // docs/observability.md), served from the first listen() on. Over TLS when `tls` is set
  // (the node's certificate; clients need one of the CA); plain HTTP only on loopback unless
  // insecure_plain_tcp. Empty: none.
  std::string http;
  // Limits of one evaluation when the request leaves them at zero...
  Limits default_limits{100'000'000, 64u << 20, 5'000};
  // ...and the most a request may ask for.
  Limits max_limits{2'000'000'000, 1u << 30, 60'000};
  // Threads that run Lua chunks and services (never the network thread, except the small
  // evaluations below).
  std::size_t worker_threads = 2;
  // The network-thread fast path (docs/bench.md, "The network-thread fast path"): an unsigned remote evaluation that
  // runs at `trusted`, or at `process` where a warm guest of its principal is already waiting
  // (never a fork), is first tried on the network thread, with no hop to a worker and back,
  // within this many Lua instructions and inline_eval_wall_ms, calling only kv.get, kv.keys
  // and node.info. Past either budget, or at a call of any other service, the attempt is
  // dropped before that call has any effect and the evaluation runs on a worker as usual.
  // 0: never inline.
  std::uint64_t inline_eval_instructions = 20'000;
  std::uint32_t inline_eval_wall_ms = 2;
  std::uint32_t max_payload = 16u << 20;
  // Connections each listener serves at once (`--max-connections`); one more is closed at
  // accept. The bytes of unfinished request frames are bounded too (TransportOptions).
  std::size_t max_connections = 1024;
  // Bytes the built-in kv store may hold (keys + encoded values); kv.put past it fails.
  std::size_t kv_max_bytes = 64u << 20;
  std::chrono::milliseconds connect_timeout{3'000};
  std::chrono::milliseconds request_timeout{30'000};

  // The address peers reach this node at (an agent's home, where it is, its hops): HOST:PORT,
  // a name or an address ([v6]:PORT). Empty: the first address listen() bound, or, when that
  // is a wildcard (0.0.0.0, [::]), an address of this host's interfaces.
  std::string advertise;
  // Where the node keeps what outlives a run (`--data-dir`, docs/reliability.md): its id
  // (DIR/node-id, made at first start, used when it has no TLS identity) and, in the SQLite
  // database DIR/sojourn.db, the kv store and the agents it is home to. Empty: a fresh id per
  // start and everything in memory.
  std::string data_dir;
  // With a data dir: what a write waits for before it is acknowledged (`--durability`).
  Durability durability = Durability::full;
  // Code that came from a peer (remote evaluations, fetched modules, arriving agents) runs
  // at this isolation level at least. Unset (the default): the strongest this node has,
  // `microvm` (a KVM microVM) where /dev/kvm can run the guest, else `process` (a forked,
  // seccomp-jailed guest). `trusted` only when the node's operator trusts its peers fully.
  // A request may ask for more, never less.
  std::optional<Isolation> peer_isolation;
  // Warm guests of the process jail kept for each principal (docs/jails.md); 0: every jailed
  // run forks a guest of its own.
  std::uint32_t warm_guests = 4;
  // How a strong agent's heap image is encoded when it leaves this node (docs/migration.md,
  // "Image codecs"): lz4 (the default) for loopback and fast links, zstd where bandwidth is
  // scarce, stored where the link is faster than any codec.
  ImageCodec image_codec = ImageCodec::lz4;
  // The sojourn-guest executable for the process jail; empty: found as
  // sandbox::find_guest_binary says ($SOJOURN_GUEST, beside the executable, libexec, build tree).
  std::string guest_path;

  // Where fetched and received bundles are kept across restarts; empty: memory only.
  std::string code_cache_dir;
  // The code cache's bound: bundles (and bytes of their encodings) kept, in memory and in
  // code_cache_dir; past either, the least recently used bundle goes (published modules
  // stay). A bundle from a peer is stored only after its signature and the policy passed.
  std::size_t code_cache_max_bytes = 64u << 20;
  std::size_t code_cache_max_entries = 1024;
  // How an agent step's host-measured CPU time (the process jail's guest process, the
  // microVM's vCPU thread) turns into instructions of its budgets: a step is charged the
  // larger of the guest's own count and this many per CPU millisecond the kernel saw it use,
  // so a guest that under-reports is still charged. 0: the guest's count alone. At the
  // trusted level the count is the node's own hook's.
  std::uint64_t instructions_per_cpu_ms = 10'000;
  // Hops an agent may make when neither launch nor its bundle says.
  std::uint32_t default_max_hops = 64;
  // A hand-over that fails for a network reason is retried this many times per
  // destination, waiting retry_backoff, then twice that, ..., before the fallback.
  std::uint32_t migration_retries = 3;
  std::chrono::milliseconds retry_backoff{50};
  // The node's policy (sojourn/agents/policy.hpp, docs/security.md): which code, by its
  // signer, from which peer may run here, in which jails, with which quotas and services.
  // Null: no policy, as before trust existed: code from peers runs at peer_isolation, within
  // max_limits, may call every service, signed or not (a signature that does not verify, a
  // replayed or expired signed request is refused all the same).
  std::shared_ptr<const Policy> policy;
  // Replay protection: the furthest ahead a signed request's or a TRANSFER's expiry may be
  // (their nonces are remembered until then), and the lifetime of the TRANSFERs this node sends.
  std::chrono::milliseconds max_message_lifetime{300'000};
  std::chrono::milliseconds transfer_lifetime{60'000};
  // How long a home keeps an ended agent's status (docs/migration.md, "What a node
  // remembers"): `read_agent_retention` after its result was first read (agent.status,
  // wait_agent), at most `ended_agent_retention` after it ended. After that, agent.status
  // and agent.wait answer no_such_agent.
  std::chrono::milliseconds read_agent_retention{60'000};
  std::chrono::milliseconds ended_agent_retention{600'000};
  // How often a node sweeps what it no longer needs to remember (ended agents, COMMITs past
  // the transfer lifetime) while no new entry does it.
  std::chrono::milliseconds prune_interval{10'000};
  // For tests: the clock (Unix ms) the expiries of arriving signed requests and TRANSFERs
  // are checked against, and the retentions above are measured by, so a test can move past
  // them without waiting. Empty: the system clock.
  std::function<std::int64_t()> expiry_clock;

  // Emulated links for experiments (docs/experiments.md, `--link`, `--link-profile`): what
  // this node sends to a destination a rule matches is delayed and rate-limited, and the
  // connections it opens there pay the rule's set-up cost. Empty: the network as it is.
  LinkModel links;
  // A file the node appends its trace to, one JSON object a line with a monotonic and a wall
  // timestamp (`--trace`, docs/experiments.md). Empty: no file (the dashboard's ring only).
  std::string trace;

};

struct EvalOptions {
  Limits limits;  // zero fields: the serving node's defaults
  Isolation isolation = Isolation::trusted;
  std::string chunk_name;  // "eval" when empty
  std::chrono::milliseconds timeout{0};  // zero: NodeOptions::request_timeout
  // Signs the request with this author key (chunk, args, limits, a nonce and an expiry):
  // the serving node's policy then knows who wrote the code, and a replay is refused.
  std::shared_ptr<const SigningKey> signing_key;
  std::chrono::milliseconds signature_lifetime{60'000};  // the expiry, from now
};

// A remote evaluation's answer with where it ran.
struct EvalResult {
  Value results;  // array table of the chunk's return values
  Isolation isolation = Isolation::trusted;
};

// The isolation levels a node can run code at, and why each missing one is missing.
struct IsolationLevels {
  std::vector<Isolation> available;                          // weakest first
  std::vector<std::pair<Isolation, std::string>> missing;    // the level and the reason
  bool has(Isolation level) const;
  // "LEVEL: REASON; ..." for the missing levels (empty when none is).
  std::string why_missing() const;
};

struct NodeStats {
  std::uint64_t calls_served = 0;
  std::uint64_t evals_served = 0;
  std::uint64_t evals_inline = 0;  // of those, served on the network thread (the fast path)
  std::uint64_t requests_failed = 0;
  std::uint64_t in_flight = 0;
  std::uint64_t bundles_sent = 0;     // code.fetch answers and transfers that carried code
  std::uint64_t agents_resident = 0;
  std::uint64_t connections_refused = 0;  // TLS handshakes that failed (untrusted peer, or it refused us)
  std::uint64_t bundles_cached = 0;       // bundles in the code cache now
  std::uint64_t agents_tracked = 0;       // agents whose home is this node, ended ones not yet forgotten
  std::uint64_t commits_remembered = 0;   // hand-overs to this node it still answers duplicates of
  std::uint64_t epochs_remembered = 0;    // agents whose highest epoch here it still refuses older ones by
  std::uint64_t nonces_remembered = 0;    // nonces of TRANSFERs and signed requests not yet expired
};

class Node {
 public:
  explicit Node(NodeOptions options = {});
  ~Node();  // shutdown(0) if still running
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  const std::string& name() const;
  const NodeOptions& options() const;

  // Adds or replaces a service. Names are dotted ("kv.get"); the built-in services
  // kv.get, kv.put, kv.del, kv.keys and node.info are there from the start.
  void register_service(std::string name, Service service, ServiceOptions options = {});
  void register_service(std::string name, PeerService service, ServiceOptions options = {});

  // Serves on "host:port" (port 0 picks a free one) or "inproc://name"; returns the
  // bound address. May be called more than once. Over TLS when NodeOptions::tls says;
  // plain TCP is refused on a non-loopback address unless NodeOptions::insecure_plain_tcp.
  // Errors: bad_address, tls_config, insecure_transport.
  Result<std::string> listen(std::string_view address);

  // Client-server: runs `service` at `peer` with `args` (an array table).
  Result<Value> call(std::string_view peer, std::string_view service, Value args = Value::table());
  // Remote evaluation: runs the Lua chunk at `peer`; returns its return values (an array
  // table, EvalResult::results) and the isolation level it actually ran at.
  Result<EvalResult> eval(std::string_view peer, std::string_view source, Value args = Value::table(),
                          const EvalOptions& options = {});
  // Runs a service of this node directly (what `node.call` in Lua does).
  Result<Value> call_local(std::string_view service, const Value& args);

  // Code-on-demand. publish() makes a module fetchable by peers and returns its hash.
  Result<std::string> publish(const Bundle& bundle);
  Result<std::string> publish(std::string name, std::string source);
  // Fetches `module` from `peer` (no code crosses the wire when this node already holds
  // the peer's current hash), verifies its hash and caches it.
  Result<FetchedModule> fetch(std::string_view peer, std::string_view module);
  // Runs a module here, on this node's data: its main file with `args` as `...`;
  // require_remote inside it reaches the module's origin.
  Result<Value> run_module(const FetchedModule& module, Value args = Value::table(), const EvalOptions& options = {});

  // Mobile agents. launch() starts an agent at `at` (this node when empty), whose home
  // is that node; returns the agent's id.
  Result<std::string> launch(std::string_view at, AgentLaunch agent);
  // Asks the agent's home node.
  Result<AgentStatus> agent_status(std::string_view home, std::string_view agent_id);
  // Waits until the agent is finished, failed or stranded, or `timeout` passes (timeout):
  // the home answers when the agent ends (agent.wait), nothing polls.
  Result<AgentStatus> wait_agent(std::string_view home, std::string_view agent_id, std::chrono::milliseconds timeout);
  // Sends a message to an agent through its home node: delivered exactly once, in order
  // per sender, wherever the agent is. Returns the message id.
  Result<std::string> send_to_agent(std::string_view home, std::string_view agent_id, Value message);
  // The agents resident at `peer` (this node when empty).
  Result<std::vector<AgentSummary>> list_agents(std::string_view peer = {});

  // The isolation levels this node can run code at, and why each missing one is missing
  // (`process` and `microvm` once their jails have started; the first call starts them).
  IsolationLevels isolation_levels();
  // The level code from peers runs at, at least: NodeOptions::peer_isolation, or when that
  // is unset the strongest level this node has (decided on first use).
  Isolation peer_isolation();

  // The address peers reach this node at (NodeOptions::advertise or the first bound).
  std::string advertised_address() const;
  // The node's stable id (its TLS key fingerprint, else the id in data_dir or a fresh one):
  // what agent TRANSFERs and signed evaluations are addressed to (docs/protocol.md).
  std::string node_id() const;
  // Where the node keeps its state (docs/reliability.md): "in memory (no --data-dir)" or
  // "DIR/sojourn.db (SQLite, durability full)"; the error when NodeOptions::data_dir was
  // given but its store cannot be used (listen() and the kv services return it too).
  Result<std::string> storage() const;
  // The bound address of the dashboard (NodeOptions::http, port 0 resolved); empty before
  // the first listen() or without NodeOptions::http.
  std::string http_address() const;

  // Stops accepting, gives requests in flight up to `grace` to finish, then ends the
  // rest with "node is shutting down" and closes every connection. Idempotent.
  void shutdown(std::chrono::milliseconds grace = std::chrono::seconds(5));
  bool running() const;

  NodeStats stats() const;

 private:
  struct Impl;  // the library's own (agents/node_impl.hpp)
  static Result<void> serve_http(const std::shared_ptr<Impl>& impl);
  std::shared_ptr<Impl> impl_;
  friend Impl& node_impl(Node&);
};

}  // namespace sojourn
