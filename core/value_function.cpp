// The function part of the Value API: Lua functions as text plus upvalue cells.
#include <stdexcept>
#include <string>

#include "sojourn/core/value.hpp"

namespace sojourn {

using detail::FunctionData;
using detail::FunctionRef;
using detail::Slot;

namespace {

Value make_function(const std::shared_ptr<detail::Graph>& graph, FunctionData data) {
  graph->functions.push_back(std::move(data));
  return Value::from_slot(graph, FunctionRef{static_cast<std::uint32_t>(graph->functions.size() - 1)});
}

}  // namespace

Value Value::function(std::string source, std::string chunk_name, std::uint32_t line) {
  FunctionData data;
  data.source = std::move(source);
  data.chunk_name = std::move(chunk_name);
  data.line = line;
  return make_function(std::make_shared<detail::Graph>(), std::move(data));
}

Value Value::library_function(std::string name) {
  FunctionData data;
  data.chunk_name = std::string("=[library]");
  data.library_name = std::move(name);
  return make_function(std::make_shared<detail::Graph>(), std::move(data));
}

Value Value::new_function(std::string source, std::string chunk_name, std::uint32_t line) const {
  if (!is_table() && !is_function()) throw std::logic_error("new_function() needs a table or function value");
  FunctionData data;
  data.source = std::move(source);
  data.chunk_name = std::move(chunk_name);
  data.line = line;
  return make_function(graph_, std::move(data));
}

FunctionData& Value::function_data() const {
  if (!is_function()) throw std::logic_error("not a function: " + std::string(type_name()));
  return graph_->functions[std::get<FunctionRef>(slot_).index];
}

std::uint32_t Value::cell_of(std::size_t upvalue) const {
  const FunctionData& f = function_data();
  if (upvalue >= f.upvalue_cells.size()) {
    throw std::out_of_range("upvalue " + std::to_string(upvalue) + " of a function with " +
                            std::to_string(f.upvalue_cells.size()));
  }
  return f.upvalue_cells[upvalue];
}

const std::string& Value::function_source() const { return function_data().source.str(); }
const std::string& Value::function_chunk_name() const { return function_data().chunk_name.str(); }
std::uint32_t Value::function_line() const { return function_data().line; }
const std::string& Value::library_name() const { return function_data().library_name; }
std::size_t Value::upvalue_count() const { return function_data().upvalue_cells.size(); }

const std::string& Value::upvalue_name(std::size_t i) const {
  cell_of(i);
  return function_data().upvalue_names[i];
}

Value Value::upvalue(std::size_t i) const { return from_slot(graph_, graph_->cells[cell_of(i)]); }

std::size_t Value::add_upvalue(std::string name, const Value& value) {
  function_data();
  Slot slot = import_slot(value);  // may grow the graph: take references after
  graph_->cells.push_back(std::move(slot));
  FunctionData& f = function_data();
  f.upvalue_names.push_back(std::move(name));
  f.upvalue_cells.push_back(static_cast<std::uint32_t>(graph_->cells.size() - 1));
  return f.upvalue_cells.size() - 1;
}

void Value::set_upvalue(std::size_t i, const Value& value) {
  const std::uint32_t cell = cell_of(i);
  Slot slot = import_slot(value);
  graph_->cells[cell] = std::move(slot);
}

void Value::join_upvalue(std::size_t i, const Value& other, std::size_t j) {
  cell_of(i);
  if (!other.is_function() || other.graph_ != graph_) {
    throw std::invalid_argument("join_upvalue() needs a function of the same graph");
  }
  function_data().upvalue_cells[i] = other.cell_of(j);
}

bool Value::same_upvalue(std::size_t i, const Value& other, std::size_t j) const {
  return other.is_function() && other.graph_ == graph_ && cell_of(i) == other.cell_of(j);
}

bool Value::same_function(const Value& other) const noexcept {
  return is_function() && other.is_function() && graph_ == other.graph_ &&
         std::get<FunctionRef>(slot_) == std::get<FunctionRef>(other.slot_);
}

}  // namespace sojourn
