"""Benchmarks that run through the package: ``python3 -m sparsekv.bench.decode`` (DeepSeek-V3.2's
per-GPU decode slice at full size, all-in-HBM vs sparsekv)."""
