"""Benchmarks: the paper's Table 1 measured, and training and decoding speed harnesses."""
