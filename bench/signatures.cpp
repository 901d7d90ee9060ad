// bench_signatures: what signed code costs.
//  1. per bundle (1 KB and 64 KB of source): signing; a first verification (the node
//     hashes the bundle and checks the Ed25519 signature) vs a cached one (the node has
//     verified this (hash, signer) before);
//  2. a remote evaluation on loopback, unsigned vs signed (signing, the nonce check and the
//     verification on the serving node), at the trusted level so the jail does not hide it.
// Prints median and p99 in microseconds and the ratios. On a shared VM compare the ratios.
#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "bench/stats.hpp"
#include "sojourn/agents/node.hpp"
#include "sojourn/core/log.hpp"
#include "sojourn/core/signature.hpp"

namespace sojourn::bench {
namespace {

using Clock = std::chrono::steady_clock;

LatencySummary time_each(int runs, const std::function<void()>& f) {
  std::vector<double> samples;
  samples.reserve(static_cast<std::size_t>(runs));
  for (int i = 0; i < runs; ++i) {
    auto t0 = Clock::now();
    f();
    samples.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
  }
  return summarize(std::move(samples));
}

void row(const char* what, const LatencySummary& s, double ratio, const char* ratio_to) {
  std::printf("  %-40s %10.2f %10.2f   %8.2fx %s\n", what, s.median_us, s.p99_us, ratio, ratio_to);
}

Bundle bundle_of(std::size_t source_bytes) {
  std::string source = "local M = {}\nfunction M.start(s) return 1 end\n";
  while (source.size() < source_bytes) source += "-- padding to make the bundle bigger, as real code would be\n";
  auto b = single_file_bundle("bench", source, {"start"});
  if (!b) throw std::runtime_error(b.error().message);
  b->manifest.cpu_budget = 1'000'000;
  return *b;
}

int run(int runs) {
  auto key = SigningKey::generate();
  if (!key) {
    std::fprintf(stderr, "%s\n", key.error().message.c_str());
    return 1;
  }
  std::printf("bundle signatures (Ed25519, OpenSSL), %d runs each\n", runs);
  std::printf("  %-40s %10s %10s   %s\n", "", "median_us", "p99_us", "ratio");
  for (std::size_t size : {std::size_t{1} << 10, std::size_t{64} << 10}) {
    const Bundle b = bundle_of(size);
    const std::vector<std::uint8_t> bytes = encode_bundle(b);
    const std::string hash = sha256_hex(bytes);
    const BundleSignature sig = sign_bundle(*key, b);
    bool ok = true;
    auto sign = time_each(runs, [&] { (void)sign_bundle(*key, b); });
    // A node meeting a bundle for the first time: it hashes the bytes and checks the signature.
    auto first = time_each(runs, [&] {
      SignatureCache fresh;
      ok &= fresh.verify(sig, sha256_hex(bytes), b.manifest).ok();
    });
    SignatureCache warm;
    ok &= warm.verify(sig, hash, b.manifest).ok();
    // Then again (each later hop of an agent with this code): the cache answers.
    auto cached = time_each(runs, [&] { ok &= warm.verify(sig, hash, b.manifest).ok(); });
    if (!ok) {
      std::fprintf(stderr, "a verification failed\n");
      return 1;
    }
    char label[64];
    std::snprintf(label, sizeof label, "%zu KB bundle: sign", size >> 10);
    row(label, sign, sign.median_us / cached.median_us, "of cached");
    std::snprintf(label, sizeof label, "%zu KB bundle: first verification", size >> 10);
    row(label, first, first.median_us / cached.median_us, "of cached");
    std::snprintf(label, sizeof label, "%zu KB bundle: cached verification", size >> 10);
    row(label, cached, 1.0, "");
  }

  NodeOptions so;
  so.name = "server";
  so.peer_isolation = Isolation::trusted;
  Node server(so);
  auto at = server.listen("127.0.0.1:0");
  NodeOptions co;
  co.name = "client";
  Node client(co);
  if (!at) {
    std::fprintf(stderr, "%s\n", at.error().message.c_str());
    return 1;
  }
  EvalOptions unsigned_eval;
  EvalOptions signed_eval;
  signed_eval.signing_key = std::make_shared<const SigningKey>(*key);
  bool ok = true;
  for (int i = 0; i < 200; ++i) ok &= client.eval(*at, "return 1").ok();  // warm the connection
  auto plain = time_each(runs, [&] { ok &= client.eval(*at, "return 1", Value::table(), unsigned_eval).ok(); });
  auto with_sig = time_each(runs, [&] { ok &= client.eval(*at, "return 1", Value::table(), signed_eval).ok(); });
  if (!ok) {
    std::fprintf(stderr, "an evaluation failed\n");
    return 1;
  }
  std::printf("\nremote evaluation `return 1` on loopback (trusted level), %d runs each\n", runs);
  std::printf("  %-40s %10s %10s   %s\n", "", "median_us", "p99_us", "ratio");
  row("unsigned REV", plain, 1.0, "");
  row("signed REV (sign + nonce + verify)", with_sig, with_sig.median_us / plain.median_us, "of unsigned");
  server.shutdown(std::chrono::milliseconds(100));
  return 0;
}

}  // namespace
}  // namespace sojourn::bench

int main(int argc, char** argv) {
  sojourn::set_log_level(sojourn::LogLevel::error);
  const int runs = argc > 1 ? std::atoi(argv[1]) : 2000;
  return sojourn::bench::run(runs);
}
