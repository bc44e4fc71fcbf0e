"""Attestations attached as BuildKit attaches them: the tag names an OCI image index holding the
image manifest and an attestation manifest.

Found by building with BuildKit v0.32.2 (``--opt attest:provenance=mode=max``) and reading what it
pushed: the attestation manifest is an OCI manifest with ``artifactType``
``application/vnd.docker.attestation.manifest.v1+json``, the empty config
(``application/vnd.oci.empty.v1+json``, ``{}``), one ``application/vnd.in-toto+json`` layer per
statement annotated ``in-toto.io/predicate-type``, and a ``subject`` naming the image manifest; the
index lists it with platform ``unknown/unknown`` and the annotations
``vnd.docker.reference.type=attestation-manifest`` and ``vnd.docker.reference.digest``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from executor.image import model
from executor.image.model import sha256_digest

ATTESTATION_ARTIFACT = "application/vnd.docker.attestation.manifest.v1+json"
IN_TOTO = "application/vnd.in-toto+json"
EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"
EMPTY_BYTES = b"{}"
PREDICATE_ANNOTATION = "in-toto.io/predicate-type"
REFERENCE_TYPE = "vnd.docker.reference.type"
REFERENCE_DIGEST = "vnd.docker.reference.digest"


@dataclass(frozen=True)
class Blob:
    """A blob held in memory, with its descriptor as a manifest lists it."""

    media_type: str
    data: bytes
    annotations: dict[str, str] | None = None

    @property
    def digest(self) -> str:
        return sha256_digest(self.data)

    def descriptor(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest,
                               "size": len(self.data)}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


@dataclass(frozen=True)
class Attached:
    """What goes beside the image: the statements, their manifest and the index naming both."""

    statements: tuple[Blob, ...]  # one in-toto layer each
    config: Blob
    manifest: Blob  # the attestation manifest
    index: Blob  # what the tag names

    @property
    def blobs(self) -> tuple[Blob, ...]:
        return (self.config, *self.statements)


def encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def attach(statements: list[dict[str, Any]], image_manifest: bytes, image_media_type: str,
           platform: dict[str, str]) -> Attached:
    """The attestation manifest for ``statements`` about the image, and the index of both."""
    layers = tuple(Blob(IN_TOTO, encode(s), {PREDICATE_ANNOTATION: s["predicateType"]})
                   for s in statements)
    config = Blob(EMPTY_CONFIG, EMPTY_BYTES)
    subject = {"mediaType": image_media_type, "digest": sha256_digest(image_manifest),
               "size": len(image_manifest)}
    manifest = Blob(model.OCI_MANIFEST, encode({
        "schemaVersion": 2,
        "mediaType": model.OCI_MANIFEST,
        "artifactType": ATTESTATION_ARTIFACT,
        "config": {**config.descriptor(), "data": base64.b64encode(EMPTY_BYTES).decode()},
        "layers": [layer.descriptor() for layer in layers],
        "subject": subject,
    }))
    index = Blob(model.OCI_INDEX, encode({
        "schemaVersion": 2,
        "mediaType": model.OCI_INDEX,
        "manifests": [
            {**subject, "platform": platform},
            {**manifest.descriptor(),
             "annotations": {REFERENCE_DIGEST: subject["digest"],
                             REFERENCE_TYPE: "attestation-manifest"},
             "platform": {"architecture": "unknown", "os": "unknown"}},
        ],
    }))
    return Attached(layers, config, manifest, index)


def image_platform(config_bytes: bytes) -> dict[str, str]:
    """The image's platform as an index lists it (os, architecture, variant)."""
    config = json.loads(config_bytes)
    platform = {"architecture": config.get("architecture") or "amd64",
                "os": config.get("os") or "linux"}
    if config.get("variant"):
        platform["variant"] = config["variant"]
    return platform


def write_files(directory: Path, statements: list[dict[str, Any]], kind: str) -> None:
    """``--attest ...,dest=DIR``: each statement as a plain JSON file for CI artefact uploads,
    named as BuildKit's local exporter names them."""
    directory.mkdir(parents=True, exist_ok=True)
    name = {"provenance": "provenance.json", "sbom": "sbom.spdx.json"}[kind]
    for statement in statements:
        (directory / name).write_text(json.dumps(statement, indent=2) + "\n")


#: ``<predicate-kind>.intoto.json`` beside a docker-save tarball, by predicate type.
_KINDS = {"https://slsa.dev/provenance/v1": "provenance", "https://spdx.dev/Document": "sbom"}


def sidecar_directory(tar_path: Path) -> Path:
    """Where ``--tar-path FILE`` keeps its attestations: ``FILE.attestations/``."""
    return tar_path.with_name(tar_path.name + ".attestations")


def write_sidecar(directory: Path, attached: Attached) -> None:
    """The attestations beside a docker-save tarball, which cannot hold an index: each in-toto
    statement as ``<predicate-kind>.intoto.json`` (the layer's exact bytes, so the digests in the
    manifest check out) and ``attestation-manifest.json``. The directory appears whole or not at
    all: filled under a temporary name beside it, then renamed over any previous one."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        for blob in attached.statements:
            predicate = (blob.annotations or {}).get(PREDICATE_ANNOTATION, "")
            kind = _KINDS.get(predicate) or predicate.rstrip("/").rsplit("/", 1)[-1].lower()
            (staging / f"{kind}.intoto.json").write_bytes(blob.data)
        (staging / "attestation-manifest.json").write_bytes(attached.manifest.data)
        os.chmod(staging, 0o755)
        previous = None
        if directory.is_dir() and not directory.is_symlink():
            previous = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old.",
                                             dir=directory.parent))
            os.replace(directory, previous)
        os.replace(staging, directory)
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
