// A guest that makes N cheap emulated syscalls (clock_gettime) and exits with status 0;
// N is argv[1] in decimal. bench_microvm times the monitor's round trip per syscall.
static long raw_syscall(long number, long a0, long a1) {
  long result;
  __asm__ volatile("syscall" : "=a"(result) : "a"(number), "D"(a0), "S"(a1) : "rcx", "r11", "memory");
  return result;
}

// The initial stack: argc, then argv[0..argc), NULL, envp, auxv.
__attribute__((used)) static void guest_main(const long* stack) {
  const long argc = stack[0];
  const char* const* argv = (const char* const*)(stack + 1);
  long n = 0;
  if (argc > 1) {
    for (const char* digit = argv[1]; *digit >= '0' && *digit <= '9'; ++digit) n = n * 10 + (*digit - '0');
  }
  long ts[2];
  for (long i = 0; i < n; ++i) {
    if (raw_syscall(228, 1, (long)ts) != 0) raw_syscall(231, 1, 0);  // clock_gettime(CLOCK_MONOTONIC)
  }
  raw_syscall(231, 0, 0);  // exit_group(0)
}

// RSP is 16-byte aligned at entry and points at argc; the call keeps the ABI's alignment.
__attribute__((naked)) void _start(void) { __asm__("mov %rsp, %rdi\n call guest_main\n hlt"); }
