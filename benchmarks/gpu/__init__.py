"""GPU benchmarks: SD3.5-M-sized DGPO iterations beside the official loops, FSDP2, the toy race on a GPU."""
