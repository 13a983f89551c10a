# Kerve's image. Targets (`docker build --target NAME .`):
#   runtime  the default: the service alone; mount a model repository at /models
#   demo     runtime with the demo zoo trained during the build (fast profile, about
#            30 minutes on 2 cores; --build-arg ZOO_PROFILE=full for the full one)
#   smoke    demo, then a RUN step that serves it and checks a real answer from every
#            endpoint: the build fails on a wrong one
# --build-arg VARIANT=gpu installs TensorFlow with CUDA instead of tensorflow-cpu.
# deploy/build-image.sh builds and checks it with podman, no Docker daemon needed.
# Stages: dependencies -> builder (the service) and zoo (the demo models); serving
# takes only the builder's venv.
ARG BASE_IMAGE=python:3.11-slim

# -- dependencies: a venv with what serving needs -------------------------------------------
FROM ${BASE_IMAGE} AS dependencies
ARG VARIANT=cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/kerve/bin:$PATH
RUN python3 -m venv /opt/kerve
WORKDIR /src
COPY pyproject.toml ./
COPY deploy/requirements.py deploy/
# A layer of their own: a code change does not reinstall TensorFlow.
RUN python deploy/requirements.py "$VARIANT" engines > requirements.txt \
    && pip install -r requirements.txt

# -- builder: the service installed into that venv ---------------------------------------
FROM dependencies AS builder
COPY README.md kerve_manifest.py kerve_publish.py kerve_cli.py kerve_backend.py ./
COPY service service
RUN pip install --no-deps .

# -- zoo: the demo models, trained offline (Fashion-MNIST from Debian, photos from PyPI) ----
# Built on the dependencies, not the service: a change to service/ does not retrain.
FROM dependencies AS zoo
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends dataset-fashion-mnist \
    && rm -rf /var/lib/apt/lists/*
RUN python deploy/requirements.py train > requirements-train.txt \
    && pip install -r requirements-train.txt
COPY kerve_manifest.py kerve_publish.py kerve_backend.py ./
COPY training training
ARG ZOO_PROFILE=fast
RUN python -m training.zoo --profile "$ZOO_PROFILE" --models-dir /zoo
COPY deploy/smoke.py deploy/smoke.py
RUN PYTHONPATH=. python deploy/smoke.py prepare /smoke

# -- serving: what runtime and demo share ------------------------------------------------
FROM ${BASE_IMAGE} AS serving
RUN useradd --system --user-group --uid 10001 --no-create-home --home-dir /nonexistent kerve \
    && mkdir /models
COPY --from=builder /opt/kerve /opt/kerve
# HOME in /tmp: Keras's config and CUDA's kernel cache go there, and the root
# filesystem may be read-only (deploy/k8s mounts a writable /tmp).
ENV PATH=/opt/kerve/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp TF_CPP_MIN_LOG_LEVEL=2 \
    SERVE_HOST=0.0.0.0 SERVE_PORT=8000 SERVE_MODELS_DIR=/models
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
# Exec form: python is PID 1 and gets SIGTERM itself. uvicorn then stops accepting,
# finishes the requests in flight (up to 30 s) and exits 0.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "service"]

# -- demo: the service with the demo zoo baked in ------------------------------------------
FROM serving AS demo
COPY --from=zoo /zoo /models
VOLUME /models

# -- smoke: serve the demo zoo inside the build and check every endpoint's answers ----------
FROM demo AS smoke
COPY --from=zoo /smoke /smoke
COPY deploy/smoke.py /smoke/smoke.py
RUN python /smoke/smoke.py check /smoke

# -- runtime (the default target): models come from a volume -------------------------------
FROM serving AS runtime
VOLUME /models
