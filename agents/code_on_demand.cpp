// Code-on-demand: serving published modules to peers (code.fetch), fetching them with the
// cache in front, and answering require_remote from Lua.
#include "agents/agent_runtime.hpp"

#include "sojourn/core/log.hpp"

namespace sojourn {

namespace {
std::string bytes_as_string(const std::vector<std::uint8_t>& bytes) {
  // SAFETY: the bytes are read as chars of the same size.
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}
}  // namespace

// By module name (with the hash the asker has) or by hash: the hash, and the bundle unless
// the asker has it.
Result<FetchAnswer> AgentRuntime::on_fetch(const FetchQuery& query) {
  std::shared_ptr<const CachedBundle> found;
  const std::string& by_hash = query.hash;
  const std::string& module = query.module;
  if (!by_hash.empty()) {
    if (!is_bundle_hash(by_hash)) return errors::invalid_argument("not a bundle hash");
    found = cache_.get(by_hash);
    if (!found) return errors::no_such_module(by_hash);
  } else {
    if (auto v = validate_module_name(module); !v) return v.error();
    found = cache_.published(module);
    if (!found) return errors::no_such_module(module);
  }
  FetchAnswer answer;
  answer.hash = found->hash;
  if (query.have != found->hash) {
    answer.bundle_bytes = bytes_as_string(found->bytes);
    ++bundles_sent_;
  }
  return answer;
}

asio::awaitable<Result<AgentRuntime::Fetched>> AgentRuntime::fetch(std::string peer, std::string module) {
  if (auto v = validate_module_name(module); !v) co_return v.error();
  FetchQuery query;
  query.module = module;
  const std::string have = cache_.last_fetch(peer, module);
  if (!have.empty() && cache_.contains(have)) query.have = have;
  Result<Value> reply = co_await links_.call_peer(peer, "code.fetch", message_args(encode(query)));
  if (!reply) co_return reply.error();
  auto answer = decode_message<FetchAnswer, decode_fetch_answer>(*reply, "code.fetch's answer");
  if (!answer) co_return answer.error();
  const std::string& hash = answer->hash;
  if (!is_bundle_hash(hash)) co_return make_error(Errc::bad_bundle, "bad bundle: the peer sent no valid hash");
  std::shared_ptr<const CachedBundle> bundle;
  if (answer->bundle_bytes) {
    const std::string& text = *answer->bundle_bytes;
    // SAFETY: the string's bytes are read as unsigned bytes of the same size.
    auto put = cache_.put_encoded(std::span(reinterpret_cast<const std::uint8_t*>(text.data()), text.size()), hash);
    if (!put) co_return put.error();
    bundle = *put;
  } else {
    bundle = cache_.get(hash);
    if (!bundle) co_return make_error(Errc::bad_bundle, "bad bundle: the peer sent no code for " + hash + " and it is not cached");
  }
  if (bundle->bundle.manifest.name != module) {
    co_return make_error(Errc::bad_bundle, "bad bundle: asked for module " + module + ", got " + bundle->bundle.manifest.name);
  }
  cache_.remember_fetch(peer, module, hash);
  Fetched fetched;
  fetched.bundle = std::move(bundle);
  fetched.code_received = answer->bundle_bytes.has_value();
  co_return fetched;
}

Result<Value> AgentRuntime::require_module(std::string_view name, const CachedBundle* bundle, const std::string& origin) {
  if (auto v = validate_module_name(name); !v) return v.error();
  auto answer = [](const std::string& source, const std::string& chunk) {
    Value m = Value::table();
    m.set("source", source);
    m.set("chunk", chunk);
    return m;
  };
  const std::string file = std::string(name) + ".lua";
  if (bundle != nullptr) {
    auto it = bundle->bundle.files.find(file);
    if (it != bundle->bundle.files.end()) return answer(it->second, file);
  }
  if (auto published = cache_.published(name)) return answer(published->bundle.main_source(), published->bundle.main_file());
  if (origin.empty() || origin == self()) return errors::no_such_module(name);
  // From the code's origin; this blocks a worker thread, never the network thread.
  if (runtime_.on_network_thread()) {
    return errors::internal("require_remote on the network thread");
  }
  auto fetched = asio::co_spawn(runtime_.io(), fetch(origin, std::string(name)), asio::use_future).get();
  if (!fetched) return fetched.error();
  return answer(fetched->bundle->bundle.main_source(), fetched->bundle->bundle.main_file());
}

}  // namespace sojourn
