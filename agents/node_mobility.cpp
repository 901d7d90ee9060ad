// The Node API of code-on-demand and mobile agents: thin blocking wrappers over the
// agent runtime and the agent.* / code.fetch protocol services.
#include "agents/agent_runtime.hpp"
#include "agents/node_impl.hpp"

#include <thread>

#include "sojourn/core/log.hpp"
#include "sojourn/sandbox/lua_sandbox.hpp"

namespace sojourn {

Result<Value> NodeHostCalls::call(std::string_view service, const Value& args) {
  // code.require too: a module from a peer is a service like any other for the policy.
  if (auto granted = check_grant(rule_, rate_, service); !granted) return granted.error();
  if (service == "code.require") {
    Value name = args.get(1);
    return modules_.require_module(name.is_string() ? name.as_string() : std::string(), bundle_, origin_);
  }
  return services_.call_from_lua(service, args);
}

bool may_carry(const ServiceRegistry& services, const PolicyRule* rule, std::string_view service, bool network_thread) {
  if (rule != nullptr && (!rule->grants(service) || rule->quotas.messages_per_second != 0)) return false;
  std::shared_ptr<const ServiceEntry> entry = services.lookup(service);
  return entry != nullptr && entry->options.read_only && !entry->options.peers_only && !entry->async_fn &&
         (!network_thread || entry->options.inline_on_network_thread);
}

std::optional<Value> carry_read(const ServiceRegistry& services, const PolicyRule* rule, std::string_view service,
                                const Value& args, bool network_thread) {
  if (!may_carry(services, rule, service, network_thread)) return std::nullopt;
  std::shared_ptr<const ServiceEntry> entry = services.lookup(service);
  if (entry == nullptr) return std::nullopt;
  Result<Value> value = ServiceRegistry::invoke(service, entry->fn, args, PeerIdentity{"local"});
  if (!value) return std::nullopt;
  return std::move(*value);
}

std::string Node::advertised_address() const { return impl_->agents->self(); }

std::string Node::node_id() const { return impl_->trust.node_id(); }

Result<std::string> Node::publish(const Bundle& bundle) { return impl_->agents->cache().publish(bundle); }

Result<std::string> Node::publish(std::string name, std::string source) {
  auto bundle = single_file_bundle(std::move(name), std::move(source));
  if (!bundle) return bundle.error();
  return publish(*bundle);
}

Result<FetchedModule> Node::fetch(std::string_view peer, std::string_view module) {
  if (impl_->runtime.on_network_thread()) {
    return errors::invalid_argument("a blocking call on the node's own network thread would deadlock");
  }
  auto fetched = asio::co_spawn(impl_->runtime.io(), impl_->agents->fetch(std::string(peer), std::string(module)), asio::use_future).get();
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
  const PolicyRule* rule = impl_->trust.rule_for({}, {});
  if (rule != nullptr && rule->refuse) return policy_refusal(*rule, "unsigned code");
  input.limits = effective_limits(options.limits, impl_->options.default_limits, impl_->trust.run_ceiling(rule));
  input.allow_jit = false;
  input.abort = impl_->runtime.abort_flag();
  Result<Isolation> level = impl_->trust.level_for(options.isolation, rule);
  if (!level) return level.error();
  NodeHostCalls host(impl_->services, *impl_->agents, cached->get(), module.origin, rule);
  return impl_->jails.run_chunk(*level, input, &host);
}

Result<std::string> Node::launch(std::string_view at, AgentLaunch agent) {
  if (auto v = validate_bundle(agent.bundle); !v) return v.error();
  // A strong launch is written into the manifest, which the signature below covers.
  if (agent.mobility == Mobility::strong) agent.bundle.manifest.mobility = "strong";
  AgentLaunchRequest request;
  std::vector<std::uint8_t> bytes = encode_bundle(agent.bundle);
  // SAFETY: the bytes are read as chars of the same size.
  request.bundle_bytes = std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  request.entry = agent.entry;
  request.state = agent.state.is_table() ? agent.state : Value::table();
  request.itinerary = agent.itinerary;
  request.owner = agent.owner;
  request.max_hops = agent.max_hops;
  request.mobility = agent.mobility;
  if (agent.signing_key) {
    BundleSignature s = sign_bundle(*agent.signing_key, agent.bundle);
    request.signer = s.public_key;
    request.signature = s.signature;
  }
  if (at.empty() || at == advertised_address()) {
    static const PeerIdentity local{"local", {}, {}};  // this node's own launch
    auto answer = impl_->agents->launch_here(request, local);
    if (!answer) return answer.error();
    return answer->id;
  }
  Result<Value> reply = call(at, "agent.launch", message_args(encode(request)));
  if (!reply) return reply.error();
  auto answer = decode_message<AgentLaunchAnswer, decode_launch_answer>(*reply, "agent.launch's answer");
  if (!answer) return answer.error();
  return answer->id;
}

Result<AgentStatus> Node::agent_status(std::string_view home, std::string_view agent_id) {
  if (home.empty() || home == advertised_address()) {
    static const PeerIdentity local{"local", {}, {}};  // this node's own code sees every agent
    return impl_->agents->status_of(agent_id, local);
  }
  // agent.wait with no wait: the status at once, typed (agent.status answers Lua's table).
  Result<Value> reply = call(home, "agent.wait", message_args(encode(WaitQuery{std::string(agent_id), 0})));
  if (!reply) return reply.error();
  return decode_message<AgentStatus, decode_status>(*reply, "agent.wait's answer");
}

Result<std::string> Node::send_to_agent(std::string_view home, std::string_view agent_id, Value message) {
  const AgentSend send{std::string(agent_id), new_agent_id(), advertised_address(), std::move(message)};
  const Value args = message_args(encode(send));
  Result<Value> reply = home.empty() || home == advertised_address() ? impl_->services.call_local("agent.send", args)
                                                                     : call(home, "agent.send", args);
  if (!reply) return reply.error();
  return send.message_id;
}

Result<std::vector<AgentSummary>> Node::list_agents(std::string_view peer) {
  if (peer.empty()) {
    static const PeerIdentity local{"local", {}, {}};
    return impl_->agents->list(local);
  }
  Result<Value> reply = call(peer, "agent.list", Value::table());
  if (!reply) return reply.error();
  return decode_message<std::vector<AgentSummary>, decode_list>(*reply, "agent.list's answer");
}

}  // namespace sojourn
