"""Publish a trained model and its manifest as a new repository version.

The publishing itself (staging folder, atomic rename, provenance) lives in the
top-level ``kerve_publish``, shared with the ``kerve publish`` command; training
scripts keep calling ``export.publish``.
"""

from __future__ import annotations

from kerve_publish import provenance_defaults, publish

__all__ = ["provenance_defaults", "publish"]
