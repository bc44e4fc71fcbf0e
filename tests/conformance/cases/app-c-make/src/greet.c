void greet(void) {}
