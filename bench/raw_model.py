"""The raw model ceiling: ``predict_on_batch`` in a loop, no server in the way.

Run as its own process (``python -m bench.raw_model MODEL --batch-size 32``) so it
gets the same thread settings as the server; prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402


def measure(model_path: str, batch_size: int, seconds: float) -> dict:
    model = keras.saving.load_model(model_path, compile=False, safe_mode=True)
    shape = (batch_size, *model.input_shape[1:])
    batch = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for _ in range(3):
        model.predict_on_batch(batch)  # trace and warm caches
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        model.predict_on_batch(batch)
        calls += 1
    elapsed = time.perf_counter() - started
    return {
        "batch_size": batch_size,
        "calls": calls,
        "seconds": elapsed,
        "samples_per_s": calls * batch_size / elapsed,
        "ms_per_batch": 1000 * elapsed / calls,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    print(json.dumps(measure(args.model, args.batch_size, args.seconds)))


if __name__ == "__main__":
    main()
