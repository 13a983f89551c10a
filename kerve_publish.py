"""Publish a Keras model and its manifest as a new repository version.

Shared by training (``training.export``) and the ``kerve publish`` command; it
imports Keras and kerve_manifest only. A version is written into a hidden staging
folder and renamed into place, so a polling service never sees a half-written version.
"""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import keras

import kerve_manifest


def publish(
    model: keras.Model,
    manifest: kerve_manifest.BaseManifest,
    repository: Path,
    name: str,
    version: int | None = None,
    extra_files: dict[str, Path] | None = None,
) -> Path:
    """Write ``model`` as ``repository/name/<version>``; the next free version by default."""
    model_dir = Path(repository) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    if version is None:
        version = max(kerve_manifest.list_versions(model_dir), default=0) + 1
    target = model_dir / str(version)
    if target.exists():
        raise ValueError(f"{target} already exists; versions are never overwritten")
    provenance = {**provenance_defaults(), **manifest.provenance}
    manifest = manifest.model_copy(update={"provenance": provenance})
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{version}-", dir=model_dir))
    try:
        model.save(staging / kerve_manifest.MODEL_FILE)
        kerve_manifest.write_manifest(staging, manifest)
        for filename, source in (extra_files or {}).items():
            shutil.copy(source, staging / filename)
        staging.chmod(0o755)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def provenance_defaults() -> dict[str, str]:
    """Who made a version, when, and from which commit."""
    return {
        "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "git_commit": _git_commit(),
        "keras_version": keras.__version__,
        "backend": keras.backend.backend(),
    }


def _git_commit() -> str:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() or "unknown"
