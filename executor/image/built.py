"""An image built (or pulled) by this build: config, and layers that are blob files on disk.

It is what the stage loop (``executor.build``) produces and what the outputs
(``executor.publish``) consume; it lives here, beside the image model, so that neither of those
two modules has to import the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from executor.image.model import DOCKER_MANIFEST, ImageConfig, Layer
from executor.image.reference import ImageRef
from snapshot.snapshot import Snapshot


@dataclass
class BuiltImage:
    """An image whose layers are blob files on local disk, ready to publish or build on."""

    config: ImageConfig
    layers: list[Layer]
    manifest_type: str = DOCKER_MANIFEST
    source: ImageRef | None = None  # the registry image it came from, for cross-repo mounts
    snapshot: Snapshot | None = None  # the root's state when the stage ended
    # The layer cache's view (executor/cache.py): what a stage FROM this image starts its key
    # chain from.
    cache_key: str = "scratch"
    # Layer digest -> another repository of the same registry holding it (the layer cache):
    # the push mounts from there rather than uploading.
    blob_homes: dict[str, ImageRef] = field(default_factory=dict)
