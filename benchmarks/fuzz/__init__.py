"""Hypothesis fuzzing of every input a user hands dgpo; the entry point is benchmarks.fuzz.inputs."""
