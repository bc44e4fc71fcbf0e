int main(void) { greet(); }
