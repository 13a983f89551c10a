# Minimal image for now; the deployment issue makes it multi-stage with a smoke target.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

WORKDIR /app
COPY pyproject.toml README.md kerve_manifest.py ./
COPY service service
COPY training training
RUN pip install --no-cache-dir ".[cpu]" \
    && useradd --system --uid 10001 kerve

USER kerve
ENV SERVE_HOST=0.0.0.0 SERVE_PORT=8000 SERVE_MODELS_DIR=/models TF_CPP_MIN_LOG_LEVEL=2
VOLUME /models
EXPOSE 8000
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
CMD ["python", "-m", "service"]
