// sojourn-guest: the static guest executable. One binary, three ways to start it:
//   sojourn-guest --zygote [--no-namespaces]   a zygote for the process jail, control socket
//                            on descriptor 3
//   sojourn-guest --serve    one run, unjailed, on the channel at descriptor 3 (benchmarks,
//                            syscall measurement, an outer jail such as bubblewrap)
#include <unistd.h>

#include <string_view>

#include "sandbox/guest/guest_serve.hpp"
#include "sandbox/guest/syscall_filter.hpp"
#include "sandbox/guest/zygote.hpp"

int main(int argc, char** argv) {
  using namespace sojourn::sandbox::guest;
  const std::string_view mode = argc > 1 ? argv[1] : "";
  if (mode == "--zygote") return run_zygote(kChannelFd, !(argc > 2 && std::string_view(argv[2]) == "--no-namespaces"));
  if (mode == "--serve") {
    (void)serve_one_run(kChannelFd);  // one run only: nothing resets an unjailed guest
    return 0;
  }
  static constexpr char kUsage[] = "usage: sojourn-guest --zygote | --serve (started by a sojourn node)\n";
  (void)!::write(2, kUsage, sizeof kUsage - 1);
  return 2;
}
