"""Fixtures shared by the suite."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import skimage.data

from tests.helpers import (
    make_settings,
    publish_colour_classifier,
    publish_colour_segmenter,
    start_client,
    wait_ready,
)

# Servers the tests start as processes serve on Keras too (see make_settings).
os.environ.setdefault("SERVE_ENGINE", "keras")


@pytest.fixture
def anyio_backend():
    """Async tests (``pytest.mark.anyio``) run on asyncio, as the service does."""
    return "asyncio"


@pytest.fixture
def repository(tmp_path) -> Path:
    """A model repository holding the colour classifier as version 1."""
    root = tmp_path / "models"
    publish_colour_classifier(root)
    return root


@pytest.fixture
def segment_repository(tmp_path) -> Path:
    """A model repository holding the colour segmenter and the colour classifier."""
    root = tmp_path / "models"
    publish_colour_segmenter(root)
    publish_colour_classifier(root)
    return root


@pytest.fixture
def client(repository):
    with start_client(make_settings(repository)) as test_client:
        wait_ready(test_client)
        yield test_client


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """A real photo (scikit-image's bundled 'chelsea', a tabby cat), RGB uint8."""
    return skimage.data.chelsea()
