"""Throughput and latency benchmarks, each measured as ratios within one run."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before any bench module imports TensorFlow
