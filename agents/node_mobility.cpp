// The Node API of code-on-demand and mobile agents: thin blocking wrappers over the
// agent runtime and the agent.* / code.fetch protocol services.
#include "agents/agent_runtime.hpp"

#include <thread>

#include "sojourn/core/log.hpp"
#include "sojourn/sandbox/lua_sandbox.hpp"

namespace sojourn {

Result<Value> NodeHostCalls::call(std::string_view service, const Value& args) {
  // code.require too: a module from a peer is a service like any other for the policy.
  if (auto granted = check_grant(rule_, rate_, service); !granted) return granted.error();
  if (service == "code.require") {
    Value name = args.get(1);
    return impl_.agents->require_module(name.is_string() ? name.as_string() : std::string(), bundle_, origin_);
  }
  return impl_.call_from_lua(service, args);
}

std::string Node::advertised_address() const { return impl_->agents->self(); }

Result<std::string> Node::publish(const Bundle& bundle) { return impl_->agents->cache().publish(bundle); }

Result<std::string> Node::publish(std::string name, std::string source) {
  auto bundle = single_file_bundle(std::move(name), std::move(source));
  if (!bundle) return bundle.error();
  return publish(*bundle);
}

Result<FetchedModule> Node::fetch(std::string_view peer, std::string_view module) {
  if (impl_->io.get_executor().running_in_this_thread()) {
    return errors::invalid_argument("a blocking call on the node's own network thread would deadlock");
  }
  auto fetched = asio::co_spawn(impl_->io, impl_->agents->fetch(std::string(peer), std::string(module)), asio::use_future).get();
  if (!fetched) return fetched.error();
  FetchedModule m;
  m.hash = fetched->bundle->hash;
  m.bundle = fetched->bundle->bundle;
  m.origin = std::string(peer);
  m.from_cache = !fetched->code_received;
  return m;
}

Result<Value> Node::run_module(const FetchedModule& module, Value args, const EvalOptions& options) {
  // The bundle is checked against its hash again: a caller may have changed it.
  auto cached = module.hash.empty() ? impl_->agents->cache().put(module.bundle)
                                    : impl_->agents->cache().put_encoded(encode_bundle(module.bundle), module.hash);
  if (!cached) return cached.error();
  sandbox::RunInput input;
  input.source = (*cached)->bundle.main_source();
  const std::string chunk = options.chunk_name.empty() ? (*cached)->bundle.main_file() : options.chunk_name;
  input.chunk_name = chunk;
  input.args = args.is_table() ? args : Value::table();
  // Fetched code came from a peer, unsigned: it runs at the node's peer level at least, or
  // as the policy's rule for unsigned code says.
  const PolicyRule* rule = impl_->rule_for({}, {});
  if (rule != nullptr && rule->refuse) return policy_refusal(*rule, "unsigned code");
  input.limits = effective_limits(options.limits, impl_->options.default_limits, impl_->run_ceiling(rule));
  input.allow_jit = false;
  input.abort = &impl_->abort_runs;
  Result<Isolation> level = impl_->level_for(options.isolation, rule);
  if (!level) return level.error();
  NodeHostCalls host(*impl_, cached->get(), module.origin, rule);
  return impl_->run_chunk(*level, input, &host);
}

Result<std::string> Node::launch(std::string_view at, AgentLaunch agent) {
  if (auto v = validate_bundle(agent.bundle); !v) return v.error();
  Value request = Value::table();
  std::vector<std::uint8_t> bytes = encode_bundle(agent.bundle);
  // SAFETY: the bytes are read as chars of the same size.
  request.set("bundle", std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
  request.set("entry", agent.entry);
  request.set("state", agent.state.is_table() ? agent.state : Value::table());
  request.set("itinerary", strings_to_value(agent.itinerary));
  request.set("owner", agent.owner);
  request.set("max_hops", static_cast<std::int64_t>(agent.max_hops));
  if (agent.sign) {
    BundleSignature s = sign_bundle(*agent.sign, agent.bundle);
    request.set("signer", s.public_key);
    request.set("signature", s.signature);
  }
  Result<Value> reply = Value{};
  if (at.empty() || at == advertised_address()) {
    static const PeerIdentity local{"local", {}, {}};  // this node's own launch
    reply = impl_->agents->launch_here(request, local);
  } else {
    reply = call(at, "agent.launch", Value::array({request}));
  }
  if (!reply) return reply.error();
  return field_string(*reply, "id");
}

Result<AgentStatus> Node::agent_status(std::string_view home, std::string_view agent_id) {
  Result<Value> reply = Value{};
  if (home.empty() || home == advertised_address()) {
    static const PeerIdentity local{"local", {}, {}};  // this node's own code sees every agent
    reply = impl_->agents->status_of(agent_id, local);
  } else {
    reply = call(home, "agent.status", Value::array({Value(agent_id)}));
  }
  if (!reply) return reply.error();
  return agent_status_from_value(*reply);
}

Result<std::string> Node::send_to_agent(std::string_view home, std::string_view agent_id, Value message) {
  Value request = Value::table();
  const std::string message_id = new_agent_id();
  request.set("id", std::string(agent_id));
  request.set("message_id", message_id);
  request.set("from", advertised_address());
  request.set("body", std::move(message));
  Result<Value> reply = Value{};
  if (home.empty() || home == advertised_address()) {
    reply = impl_->call_local("agent.send", Value::array({request}));
  } else {
    reply = call(home, "agent.send", Value::array({request}));
  }
  if (!reply) return reply.error();
  return message_id;
}

Result<std::vector<AgentSummary>> Node::list_agents(std::string_view peer) {
  Result<Value> reply = Value{};
  if (peer.empty()) {
    static const PeerIdentity local{"local", {}, {}};
    reply = impl_->agents->list(local);
  } else {
    reply = call(peer, "agent.list", Value::table());
  }
  if (!reply) return reply.error();
  std::vector<AgentSummary> out;
  for (std::size_t i = 1; i <= reply->length(); ++i) {
    Value a = reply->get(static_cast<std::int64_t>(i));
    AgentSummary s;
    s.id = field_string(a, "id");
    s.owner = field_string(a, "owner");
    s.home = field_string(a, "home");
    s.epoch = field_u64(a, "epoch");
    s.since_unix_ms = static_cast<std::int64_t>(field_u64(a, "since"));
    s.state_bytes = field_u64(a, "state_bytes");
    s.status = field_string(a, "status");
    s.isolation = field_string(a, "isolation");
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace sojourn
