"""dgpo's benchmarks, studies and robustness harnesses; each script runs as a module from the repository
root (``python -m benchmarks.perf.epoch_phases``). See benchmarks/README.md."""
