"""Hand-written kernels XLA calls through its FFI (compiled on first use)."""
