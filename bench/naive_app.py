"""What most tutorials ship: a FastAPI app that calls ``model.predict`` per request.

    python -m bench.naive_app VERSION_DIR --task classify --port 8001

One ``async def`` endpoint reads the body, preprocesses it, runs the model on it
alone with ``model.predict`` and answers. There is no batching, and the model
blocks the event loop while it runs, as in the tutorials. Preprocessing and the
response are Kerve's own (``bench.standalone``), so only the serving differs; the model
runs on Keras, as in the tutorials, and gets the upload as the request body.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import fastapi
import keras
import uvicorn

from bench import standalone
from bench.workloads import TASKS


def predict_per_call(model: keras.Model, inputs):
    """``model.predict``, the tutorials' call, where the runtime would call
    ``predict_on_batch`` (it builds a data pipeline for every call)."""
    return model.predict(inputs, verbose=0)


def make_app(served: standalone.Served) -> fastapi.FastAPI:
    app = fastapi.FastAPI()

    @app.post("/predict")
    async def predict(request: fastapi.Request) -> fastapi.Response:
        body = served.respond(await request.body())
        return fastapi.Response(body, media_type="application/json")

    @app.get("/readyz")
    async def ready() -> dict:
        return {"ready": True}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("version_dir", type=Path)
    parser.add_argument("--task", choices=sorted(TASKS), required=True)
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    served = standalone.load(args.version_dir, args.task, with_bodies=False)
    # Every model call of every runtime (the captioner's encoder and decoder steps too)
    # goes through predict_on_batch: in this process alone, make it model.predict.
    keras.Model.predict_on_batch = predict_per_call
    uvicorn.run(make_app(served), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
