"""The same model on NVIDIA Triton Inference Server, through PyTriton, for comparison.

    python -m bench.triton_app VERSION_DIR --task classify --port 8003 \
        --max-batch-size 32 --max-delay-ms 5 --engine onnxruntime --stats-file F

PyTriton starts the real ``tritonserver`` (its C++ HTTP front end and dynamic batcher,
bundled in the wheel) and binds a Python function to one model named after the version's.
Clients speak the Open Inference Protocol v2 to Triton directly: the photo (or a generate
request's JSON) goes in as a one-element BYTES tensor with the binary tensor extension,
and Kerve's JSON response comes back as a binary BYTES tensor, so nothing stands between
the load generator and Triton. Triton's batcher closes a batch at Kerve's max_batch_size
or after Kerve's max_delay_ms; the bound function, called once per batch (``@batch``), runs
Kerve's preprocessing (in as many threads as Kerve decodes in), one model call on the
engine Kerve chose (padded as Kerve pads) and Kerve's postprocessing.

Needs its own venv (``make bench-peers``: PyTriton wants numpy<2). Triton's Python
backend stub links libpython: where that is not on the loader's path (a pyenv or
self-built Python), the wrong one is found and the stub fails at model load, so the
interpreter's own library folder is put on ``LD_LIBRARY_PATH`` first.
"""

from __future__ import annotations

import os
import signal
import sysconfig

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from bench import carriers, peers


def make_infer(server: peers.BatchServer):
    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        bodies = [bytes(row[0]) for row in inputs[carriers.V2_INPUT]]
        answers = [result.model_dump_json().encode() for result in server.results(bodies)]
        return {carriers.V2_OUTPUT: np.array([[answer] for answer in answers], dtype=object)}

    return infer


def with_python_library() -> None:
    """Put this interpreter's libpython first on the path the Python backend stub loads."""
    library = sysconfig.get_config_var("LIBDIR")
    if library:
        rest = os.environ.get("LD_LIBRARY_PATH")
        os.environ["LD_LIBRARY_PATH"] = library + (f":{rest}" if rest else "")


def main() -> None:
    args = peers.parse_args(__doc__.splitlines()[0])
    served = peers.load(args)
    server = peers.BatchServer(
        served, peers.BatchStats(args.stats_file), peers.preprocess_threads()
    )
    with_python_library()
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.port,
        allow_grpc=False,
        allow_metrics=False,
        log_verbose=0,
    )
    batcher = DynamicBatcher(
        max_queue_delay_microseconds=round(args.max_delay_ms * 1000),
        # Kerve closes a batch when it is full or its oldest request has waited: prefer
        # the full size only, so that Triton does not send the smaller sizes early.
        preferred_batch_size=[args.max_batch_size],
    )
    # SIGTERM (the harness stopping it) ends serve() as Ctrl-C does, so Triton cleans up.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with Triton(config=config) as triton:
        triton.bind(
            model_name=served.runtime.name,
            infer_func=make_infer(server),
            inputs=[Tensor(name=carriers.V2_INPUT, dtype=bytes, shape=(1,))],
            outputs=[Tensor(name=carriers.V2_OUTPUT, dtype=bytes, shape=(1,))],
            config=ModelConfig(max_batch_size=args.max_batch_size, batcher=batcher),
            strict=False,
        )
        triton.serve()


if __name__ == "__main__":
    main()
