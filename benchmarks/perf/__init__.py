"""Performance: where the time goes on the CPU (epoch phases, host overhead, reward overlap, memory format)."""
