"""Errors of the filesystem layer: a layer that cannot be applied, a path that cannot be walked.

``snapshot`` knows nothing of Dockerfiles or registries, so these carry the layer and the entry,
and the executor adds the instruction around them.
"""

from __future__ import annotations


class SnapshotError(Exception):
    """A filesystem failure the user can act on; ``str()`` is one line naming the path."""


class UnsafeLayerError(SnapshotError):
    """A layer entry that would write outside the root or over an ignored path."""


class CorruptLayerError(SnapshotError):
    """A layer stream that is truncated, not a tar, or whose digest does not match."""
