// The zygote: the guest binary started once per node with LuaJIT loaded and the seccomp
// filters compiled, which forks one guest per run on the host's request, hands the host a
// pidfd of it, and reports how it ended.
#pragma once

namespace sojourn::sandbox::guest {

// Serves spawn requests on the SOCK_SEQPACKET control socket `control_fd` until the host
// closes it; then kills the guests still running and returns the exit status. Without
// `namespaces`, guests get none (a root zygote still drops them to nobody).
int run_zygote(int control_fd, bool namespaces);

}  // namespace sojourn::sandbox::guest
