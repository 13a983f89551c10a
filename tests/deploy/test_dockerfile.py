"""The Dockerfile's shape: the stages and targets the README names, a runtime image
that holds only the builder's venv, and a build context without tests or caches.

Building it takes podman and half an hour (deploy/build-image.sh); this checks what
can go wrong in an edit without building."""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def stages() -> dict[str, list[tuple[str, str]]]:
    """Stage name -> its instructions as (KEYWORD, arguments), continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    found: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        keyword, _, arguments = line.strip().partition(" ")
        if keyword.upper() == "FROM":
            current = [("FROM", arguments)]
            found[arguments.split(" AS ")[-1].strip()] = current
        else:
            current.append((keyword.upper(), arguments))
    return found


def instructions(stage: str) -> list[tuple[str, str]]:
    """A stage's instructions, those of the stages it builds on first."""
    own = stages()[stage]
    parent = own[0][1].split(" AS ")[0].strip()
    return (instructions(parent) if parent in stages() else []) + own


def last(stage: str, keyword: str) -> str:
    return [arguments for word, arguments in instructions(stage) if word == keyword][-1]


def test_the_targets_and_the_default():
    names = list(stages())
    assert {"builder", "zoo", "serving", "demo", "smoke", "runtime"} <= set(names)
    assert names[-1] == "runtime"  # `docker build .` gives the service, not the zoo
    assert "ARG BASE_IMAGE=python:3.11-slim" in (ROOT / "Dockerfile").read_text()


@pytest.mark.parametrize("target", ["runtime", "demo", "smoke"])
def test_the_served_images_run_the_service_unprivileged(target):
    assert json.loads(last(target, "CMD")) == ["python", "-m", "service"]  # exec form
    assert last(target, "USER") == "10001:10001"  # numeric: runAsNonRoot can check it
    assert "/healthz" in last(target, "HEALTHCHECK")
    assert last(target, "EXPOSE") == "8000"
    assert last(target, "STOPSIGNAL") == "SIGTERM"
    assert "SERVE_HOST=0.0.0.0" in last(target, "ENV")
    assert last(target, "VOLUME") == "/models"


def test_the_runtime_image_takes_only_the_builders_venv():
    copies = [arguments for word, arguments in instructions("runtime") if word == "COPY"]
    assert copies == ["--from=builder /opt/kerve /opt/kerve"]
    assert stages()["serving"][0][1].startswith("${BASE_IMAGE}")  # a fresh base


def test_the_build_context_leaves_out_tests_caches_and_models():
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def excluded(path: str) -> bool:
        return any(fnmatch.fnmatch(path, pattern) or path.startswith(pattern.rstrip("/") + "/")
                   for pattern in ignored)  # fmt: skip

    for path in (".venv", ".git", "tests", "models", "bench/results", "loadtest/reports"):
        assert excluded(path), path
    sources = [
        source
        for stage in stages().values()
        for word, arguments in stage
        if word == "COPY" and not arguments.startswith("--from")
        for source in arguments.split()[:-1]
    ]
    for source in sources:  # what the build copies exists and is in the context
        assert (ROOT / source).exists(), source
        assert not excluded(source), source


def test_compose_builds_the_runtime_target():
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    build = compose["services"]["kerve"]["build"]
    assert build["target"] in stages()
    assert build["target"] == "runtime"
