"""OCI image layout output (image-spec ``image-layout.md``): what ``--oci-layout-path`` writes.

A layout is a directory of content-addressed blobs plus ``index.json`` naming the images in it.
Writing into an existing layout adds to it: blobs already present are kept, other images in
``index.json`` are kept, and an image with the same ``org.opencontainers.image.ref.name``
replaces the old entry (a tag moves, as in a registry). Layer blobs are hard-linked from the
build's blob files when the filesystem allows and copied otherwise; nothing is read into memory.
Every file is written under a temporary name and renamed, so a crash leaves no torn blob or
index behind; a new layout is made whole in a directory beside its path and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from executor.errors import ImageError
from executor.image.atomic import is_mount_point, replacing, write_atomically
from executor.image.model import OCI_INDEX, Descriptor, Layer, Manifest, sha256_digest

LAYOUT_VERSION = "1.0.0"
#: The annotation that gives an index.json entry its name (``oci:DIR:NAME`` in skopeo).
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"


def write_oci_layout(path: Path, manifest_bytes: bytes, config_bytes: bytes,
                     layers: Sequence[Layer], ref_name: str | None = None) -> Descriptor:
    """Write one image into the layout at ``path`` (created when missing).

    ``layers`` are the manifest's layers, bottom first, as blob files on disk. Returns the
    descriptor of the manifest as recorded in ``index.json``.
    """
    manifest = Manifest.from_bytes(manifest_bytes)
    if sha256_digest(config_bytes) != manifest.config.digest:
        raise ImageError(f"OCI layout {path}: the config is not the one the manifest names "
                         f"({manifest.config.digest})")
    wanted = [d.digest for d in manifest.layers]
    given = [layer.digest for layer in layers]
    if wanted != given:
        raise ImageError(f"OCI layout {path}: the layers given ({', '.join(given) or 'none'}) "
                         f"are not the manifest's ({', '.join(wanted) or 'none'})")
    if _is_new(path):
        return _write_new_layout(path, manifest, manifest_bytes, config_bytes, layers, ref_name)
    return _add_image(path, manifest, manifest_bytes, config_bytes, layers, ref_name)


def _add_image(path: Path, manifest: Manifest, manifest_bytes: bytes, config_bytes: bytes,
               layers: Sequence[Layer], ref_name: str | None) -> Descriptor:
    """Blobs first, ``index.json`` last: a failure part way leaves the layout as it was, plus
    blobs nothing names yet."""
    init_layout(path)
    write_blob(path, config_bytes, manifest.config.media_type)
    for layer in layers:
        link_blob(path, layer.path, layer.digest, layer.size)
    descriptor = write_blob(path, manifest_bytes, manifest.media_type)
    return add_to_index(path, descriptor, ref_name)


def _is_new(path: Path) -> bool:
    """A layout that does not exist yet (or an empty directory): it can be made whole aside.
    Not a mount point (a volume given as the layout): no rename can replace that."""
    if is_mount_point(path):
        return False
    try:
        with os.scandir(path) as entries:
            return next(entries, None) is None
    except FileNotFoundError:
        return True
    except NotADirectoryError:
        raise ImageError(f"OCI layout {path}: not a directory") from None


def _write_new_layout(path: Path, manifest: Manifest, manifest_bytes: bytes, config_bytes: bytes,
                      layers: Sequence[Layer], ref_name: str | None) -> Descriptor:
    """Make the layout in a directory beside ``path`` and rename it into place when complete,
    so a full disk leaves no half-made layout (a rename replaces an empty directory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        descriptor = _add_image(temporary, manifest, manifest_bytes, config_bytes, layers,
                                ref_name)
        os.chmod(temporary, 0o755)
        os.rename(temporary, path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return descriptor


def init_layout(path: Path) -> None:
    """Make ``path`` an OCI layout: ``oci-layout``, an ``index.json`` and ``blobs/sha256``."""
    (path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    marker = path / "oci-layout"
    if marker.exists():
        data = _read_json(marker)
        if data.get("imageLayoutVersion") != LAYOUT_VERSION:
            raise ImageError(f"OCI layout {path}: unsupported imageLayoutVersion "
                             f"{data.get('imageLayoutVersion')!r}")
    else:
        write_atomically(marker, json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode())
    if not (path / "index.json").exists():
        _write_index(path, {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})


def blob_path(path: Path, digest: str) -> Path:
    """Where the blob ``digest`` lives in the layout at ``path``."""
    algorithm, _, hexpart = digest.partition(":")
    if not algorithm or not hexpart or "/" in digest:
        raise ImageError(f"OCI layout {path}: invalid digest {digest!r}")
    return path / "blobs" / algorithm / hexpart


def write_blob(path: Path, data: bytes, media_type: str) -> Descriptor:
    """Store ``data`` as a blob (kept if already present); its descriptor."""
    digest = sha256_digest(data)
    target = blob_path(path, digest)
    if not _has_blob(target, len(data)):
        write_atomically(target, data)
    return Descriptor(media_type, digest, len(data))


def link_blob(path: Path, source: Path, digest: str, size: int) -> Path:
    """Put the blob file ``source`` into the layout: a hard link where possible, else a copy."""
    target = blob_path(path, digest)
    if _has_blob(target, size):
        return target
    actual = source.stat().st_size
    if actual != size:
        raise ImageError(f"blob {digest} in {source} is {actual} bytes, expected {size}")
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.link")
    temporary.unlink(missing_ok=True)
    try:
        os.link(source, temporary)
    except OSError:  # another filesystem, or links not allowed: copy instead
        with replacing(target) as handle, source.open("rb") as src:
            shutil.copyfileobj(src, handle, 1 << 20)
        return target
    os.replace(temporary, target)
    return target


def add_to_index(path: Path, descriptor: Descriptor, ref_name: str | None = None) -> Descriptor:
    """Record ``descriptor`` (a manifest or an index) in ``index.json``, named ``ref_name``.

    An entry with the same name is replaced; an unnamed entry for the same digest is not
    duplicated. Entries kiln does not understand are kept as they are.
    """
    annotations = dict(descriptor.annotations or {})
    if ref_name is not None:
        annotations[REF_NAME_ANNOTATION] = ref_name
    entry = Descriptor(descriptor.media_type, descriptor.digest, descriptor.size,
                       annotations or None, descriptor.platform, descriptor.urls)
    index = _read_json(path / "index.json")
    kept = []
    for existing in index.get("manifests") or []:
        name = (existing.get("annotations") or {}).get(REF_NAME_ANNOTATION)
        if ref_name is not None and name == ref_name:
            continue
        if name is None and ref_name is None and existing.get("digest") == entry.digest:
            continue
        kept.append(existing)
    index["manifests"] = [*kept, entry.to_json()]
    _write_index(path, index)
    return entry


def _has_blob(target: Path, size: int) -> bool:
    try:
        return target.stat().st_size == size
    except FileNotFoundError:
        return False


def _read_json(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_bytes())
    except (OSError, ValueError) as exc:
        raise ImageError(f"OCI layout: cannot read {file}: {exc}") from None
    if not isinstance(data, dict):
        raise ImageError(f"OCI layout: {file} is not a JSON object")
    return data


def _write_index(path: Path, index: dict[str, Any]) -> None:
    index.setdefault("schemaVersion", 2)
    write_atomically(path / "index.json", json.dumps(index, indent=2).encode())
