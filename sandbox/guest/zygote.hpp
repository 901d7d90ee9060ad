// The zygote: the guest binary started once per node with LuaJIT loaded and the seccomp
// filters compiled, which forks one guest per run on the host's request, hands the host a
// pidfd of it, and reports how it ended.
#pragma once

namespace sojourn::sandbox::guest {

// Serves spawn requests on the SOCK_SEQPACKET control socket `control_fd` until the host
// closes it; then kills the guests still running and returns the exit status. Without
// `namespaces`, guests get none (a root zygote still drops them to nobody).
int run_zygote(int control_fd, bool namespaces);

// Test seam (sandbox/guest/test_hooks.cpp): true only in the test guest started under a name
// ending in "-no-shared-net", whose zygote then makes no shared network namespace, as on a
// host that allows neither way; the real guest's version is always false.
bool test_refuses_shared_net();

}  // namespace sojourn::sandbox::guest
