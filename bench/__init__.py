"""Throughput and latency benchmarks, each measured as ratios within one run."""
