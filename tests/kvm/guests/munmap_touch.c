// A guest that writes a page, unmaps it and writes it again: the second write must fault,
// which needs the TLB flush the monitor's flush stub does after munmap.
static long raw_syscall(long number, long a0, long a1, long a2, long a3, long a4, long a5) {
  long result;
  register long r10 __asm__("r10") = a3;
  register long r8 __asm__("r8") = a4;
  register long r9 __asm__("r9") = a5;
  __asm__ volatile("syscall" : "=a"(result) : "a"(number), "D"(a0), "S"(a1), "d"(a2), "r"(r10), "r"(r8), "r"(r9)
                   : "rcx", "r11", "memory");
  return result;
}

void _start(void) {
  volatile long* page = (volatile long*)raw_syscall(9, 0, 4096, 3, 0x22, -1, 0);  // mmap RW, private anonymous
  *page = 1;
  raw_syscall(11, (long)page, 4096, 0, 0, 0, 0);  // munmap
  *page = 2;                                      // must fault
  raw_syscall(231, 7, 0, 0, 0, 0, 0);             // exit_group(7): the fault was missed
}
