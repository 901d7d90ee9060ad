// Internal: the bytes a server holds in request frames it is still reading, summed over all
// its connections, against one limit. Many slow senders together cannot pin more memory
// than this, whatever lengths their headers declare.
#pragma once

#include <atomic>
#include <cstddef>
#include <memory>

namespace sojourn::transport_detail {

class ReadBudget {
 public:
  explicit ReadBudget(std::size_t limit) : limit_(limit) {}

  // Takes n bytes, or nothing (false) when that would pass the limit.
  bool take(std::size_t n) {
    std::size_t held = held_.load(std::memory_order_relaxed);
    do {
      if (n > limit_ - held) return false;
    } while (!held_.compare_exchange_weak(held, held + n, std::memory_order_relaxed));
    std::size_t peak = peak_.load(std::memory_order_relaxed);
    while (held + n > peak && !peak_.compare_exchange_weak(peak, held + n, std::memory_order_relaxed)) {
    }
    return true;
  }
  void give_back(std::size_t n) { held_.fetch_sub(n, std::memory_order_relaxed); }

  std::size_t limit() const { return limit_; }
  std::size_t held() const { return held_.load(std::memory_order_relaxed); }
  std::size_t peak() const { return peak_.load(std::memory_order_relaxed); }

 private:
  const std::size_t limit_;
  std::atomic<std::size_t> held_{0};
  std::atomic<std::size_t> peak_{0};
};

// What one frame being read holds of a budget; all of it goes back when the frame is
// complete or abandoned. Without a budget (a client's link) it only counts.
class BudgetCharge {
 public:
  explicit BudgetCharge(ReadBudget* budget) : budget_(budget) {}
  ~BudgetCharge() {
    if (budget_ != nullptr) budget_->give_back(held_);
  }
  BudgetCharge(const BudgetCharge&) = delete;
  BudgetCharge& operator=(const BudgetCharge&) = delete;

  bool take(std::size_t n) {
    if (budget_ != nullptr && !budget_->take(n)) return false;
    held_ += n;
    return true;
  }

 private:
  ReadBudget* budget_;
  std::size_t held_ = 0;
};

}  // namespace sojourn::transport_detail
