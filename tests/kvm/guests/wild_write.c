// A guest that writes where nothing is mapped: the microVM must end naming the address.
void _start(void) {
  *(volatile long*)0xdead0000 = 1;
  __asm__ volatile("mov $231, %eax; xor %edi, %edi; syscall");
}
