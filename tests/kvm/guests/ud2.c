// A guest whose first instruction is invalid: the microVM must end with #UD at its RIP.
void _start(void) { __asm__ volatile("ud2"); }
