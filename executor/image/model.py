"""The image model: the OCI / Docker v2 schema 2 nouns, as small immutable values.

Names follow the image spec (``Descriptor``, ``Manifest``, ``Index``, ``ImageConfig``) the way
go-containerregistry's ``pkg/v1`` does, so anyone who knows the spec knows these types. Every
place an image can live (registry, OCI layout, docker-save tarball) reads and writes these.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from executor.errors import ImageError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_FOREIGN_LAYER_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)

# What a registry is asked for when resolving a tag: every manifest and index kind we can read.
ACCEPT_MANIFESTS = ", ".join((*MANIFEST_TYPES, *INDEX_TYPES))


def sha256_digest(data: bytes) -> str:
    """The ``sha256:...`` digest of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def compression_of(media_type: str) -> str:
    """``gzip``, ``zstd`` or ``none`` for a layer media type; unknown types are refused."""
    if media_type in (OCI_LAYER_GZIP, DOCKER_LAYER_GZIP, OCI_FOREIGN_LAYER_GZIP,
                      DOCKER_FOREIGN_LAYER):
        return "gzip"
    if media_type == OCI_LAYER_ZSTD:
        return "zstd"
    if media_type in (OCI_LAYER, "application/vnd.oci.image.layer.nondistributable.v1.tar"):
        return "none"
    raise ImageError(f"unsupported layer media type {media_type!r}")


@dataclass(frozen=True)
class Platform:
    """os/architecture[/variant], as in an index entry or ``--custom-platform``."""

    os: str = "linux"
    architecture: str = "amd64"
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ImageError(f"invalid platform {text!r}: expected os/arch[/variant]")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Platform:
        return cls(data.get("os", ""), data.get("architecture", ""), data.get("variant"))

    def matches(self, other: Platform) -> bool:
        """True when ``other`` (an index entry) can run as this platform."""
        if (self.os, self.architecture) != (other.os, other.architecture):
            return False
        return self.variant is None or other.variant in (None, self.variant)

    def __str__(self) -> str:
        base = f"{self.os}/{self.architecture}"
        return f"{base}/{self.variant}" if self.variant else base


@dataclass(frozen=True)
class Descriptor:
    """A content-addressed pointer: media type, digest and size (image-spec descriptor.md)."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] | None = None
    platform: Platform | None = None
    urls: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, data: Any, what: str = "descriptor") -> Descriptor:
        """Parse one descriptor; ``what`` names it in errors (``the config descriptor``,
        ``layer 2's descriptor``), which say which field is missing or wrong."""
        if not isinstance(data, dict):
            raise ImageError(f"{what} is a JSON {_json_kind(data)}, not an object")
        for name in ("mediaType", "digest", "size"):
            if name not in data:
                raise ImageError(f"{what} lacks the {name!r} field")
        media_type, digest, size = data["mediaType"], data["digest"], data["size"]
        if not isinstance(media_type, str) or not isinstance(digest, str):
            raise ImageError(f"{what}: 'mediaType' and 'digest' must be strings")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ImageError(f"{what}: 'size' must be a whole number of bytes, not {size!r}")
        platform, annotations, urls = (data.get("platform"), data.get("annotations"),
                                       data.get("urls"))
        if platform is not None and not isinstance(platform, dict):
            raise ImageError(f"{what}: 'platform' must be an object")
        if annotations is not None and not isinstance(annotations, dict):
            raise ImageError(f"{what}: 'annotations' must be an object")
        if urls is not None and (not isinstance(urls, list)
                                 or not all(isinstance(u, str) for u in urls)):
            raise ImageError(f"{what}: 'urls' must be a list of strings")
        return cls(media_type=media_type, digest=digest, size=size, annotations=annotations,
                   platform=Platform.from_json(platform) if platform else None,
                   urls=tuple(urls or ()))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest,
                               "size": self.size}
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform:
            plat: dict[str, str] = {"architecture": self.platform.architecture,
                                    "os": self.platform.os}
            if self.platform.variant:
                plat["variant"] = self.platform.variant
            out["platform"] = plat
        return out


@dataclass(frozen=True)
class Manifest:
    """An image manifest (OCI or Docker v2s2): one config and the layers, bottom first."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: dict[str, str] | None = None

    @classmethod
    def from_bytes(cls, body: bytes, media_type: str | None = None) -> Manifest:
        data = _load_json(body, "manifest")
        kind = data.get("mediaType") or media_type or OCI_MANIFEST
        if kind not in MANIFEST_TYPES:
            raise ImageError(f"not an image manifest: media type {kind!r}")
        if "config" not in data:
            raise ImageError("manifest lacks the 'config' field")
        layers = data.get("layers")
        if layers is None:
            layers = []
        if not isinstance(layers, list):
            raise ImageError(f"manifest's 'layers' is a JSON {_json_kind(layers)}, not a list")
        annotations = data.get("annotations")
        if annotations is not None and not isinstance(annotations, dict):
            raise ImageError("manifest's 'annotations' must be an object")
        return cls(
            media_type=kind,
            config=Descriptor.from_json(data["config"], "the config descriptor"),
            layers=tuple(Descriptor.from_json(layer, f"layer {i}'s descriptor")
                         for i, layer in enumerate(layers, 1)),
            annotations=annotations,
        )

    def to_bytes(self) -> bytes:
        data: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": self.media_type,
            "config": self.config.to_json(),
            "layers": [layer.to_json() for layer in self.layers],
        }
        if self.annotations:
            data["annotations"] = dict(self.annotations)
        return json.dumps(data, indent=2).encode()


@dataclass(frozen=True)
class Index:
    """An image index / manifest list: one manifest per platform."""

    media_type: str
    manifests: tuple[Descriptor, ...]

    @classmethod
    def from_bytes(cls, body: bytes, media_type: str | None = None) -> Index:
        data = _load_json(body, "index")
        kind = data.get("mediaType") or media_type or OCI_INDEX
        manifests = data.get("manifests")
        if manifests is None:
            manifests = []
        if not isinstance(manifests, list):
            raise ImageError(f"index's 'manifests' is a JSON {_json_kind(manifests)}, not a "
                             "list")
        return cls(kind, tuple(Descriptor.from_json(m, f"manifest {i}'s descriptor")
                               for i, m in enumerate(manifests, 1)))

    def select(self, platform: Platform) -> Descriptor:
        """The manifest for ``platform``; an error listing what the index offers otherwise."""
        for entry in self.manifests:
            if entry.platform and platform.matches(entry.platform):
                return entry
        offered = ", ".join(str(m.platform) for m in self.manifests if m.platform) or "none"
        raise ImageError(f"no image for platform {platform} (the index offers: {offered})")


@dataclass
class ImageConfig:
    """The image config JSON (``config``, ``rootfs``, ``history``), kept as the registry sent it.

    It is held as the parsed document rather than a field per key so that keys kiln does not
    know (Docker's ``container_config``, vendor extensions) survive a rebuild untouched.
    """

    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def empty(cls, platform: Platform) -> ImageConfig:
        """The config of ``FROM scratch``: BuildKit gives it the default PATH and ``/`` as
        the working directory."""
        return cls({
            "architecture": platform.architecture,
            "os": platform.os,
            **({"variant": platform.variant} if platform.variant else {}),
            "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:"
                               "/bin"], "WorkingDir": "/"} if platform.os == "linux" else {},
            "rootfs": {"type": "layers", "diff_ids": []},
            "history": [],
        })

    @classmethod
    def from_bytes(cls, body: bytes) -> ImageConfig:
        data = _load_json(body, "image config")
        if data.get("config") is None:
            data["config"] = {}
        data.setdefault("rootfs", {"type": "layers", "diff_ids": []})
        data.setdefault("history", [])
        _check_config_shape(data)
        return cls(data)

    def copy(self) -> ImageConfig:
        return ImageConfig(copy.deepcopy(self.data))

    def to_bytes(self) -> bytes:
        return json.dumps(self.data, separators=(",", ":")).encode()

    @property
    def container(self) -> dict[str, Any]:
        """The runtime part (``Env``, ``Cmd``, ``WorkingDir`` ...); created when absent."""
        config = self.data.get("config")
        if not isinstance(config, dict):
            config = self.data["config"] = {}
        return config

    @property
    def diff_ids(self) -> list[str]:
        return list(self.data.get("rootfs", {}).get("diff_ids") or [])

    @property
    def env(self) -> list[str]:
        return list(self.container.get("Env") or [])

    def env_value(self, name: str) -> str | None:
        for item in self.env:
            key, _, value = item.partition("=")
            if key == name:
                return value
        return None

    def set_env(self, name: str, value: str) -> None:
        """Set ``name`` in place, keeping its position as Docker does (append when new)."""
        env = self.env
        for i, item in enumerate(env):
            if item.partition("=")[0] == name:
                env[i] = f"{name}={value}"
                break
        else:
            env.append(f"{name}={value}")
        self.container["Env"] = env

    def add_layer(self, diff_id: str, created_by: str, created: str, comment: str = "") -> None:
        """Record a new layer and its history entry."""
        self.data.setdefault("rootfs", {"type": "layers", "diff_ids": []})
        self.data["rootfs"].setdefault("diff_ids", []).append(diff_id)
        self._add_history(created_by, created, empty_layer=False, comment=comment)

    def add_empty_history(self, created_by: str, created: str, comment: str = "") -> None:
        """Record a step that changed only the config (ENV, CMD ...), as Docker does."""
        self._add_history(created_by, created, empty_layer=True, comment=comment)

    def _add_history(self, created_by: str, created: str, *, empty_layer: bool,
                     comment: str) -> None:
        entry: dict[str, Any] = {"created": created, "created_by": created_by}
        if comment:
            entry["comment"] = comment
        if empty_layer:
            entry["empty_layer"] = True
        self.data.setdefault("history", []).append(entry)
        self.data["created"] = created


@dataclass(frozen=True)
class Layer:
    """A layer blob on local disk: compressed bytes, their digest, and the diff_id of the tar."""

    path: Path
    digest: str
    diff_id: str
    size: int
    media_type: str

    def descriptor(self) -> Descriptor:
        return Descriptor(self.media_type, self.digest, self.size)


def _check_config_shape(data: dict[str, Any]) -> None:
    """Refuse an image config whose parts kiln reads have the wrong JSON types, in one line,
    rather than fail on them later with an AttributeError."""
    shapes = (("config", data.get("config"), dict), ("rootfs", data.get("rootfs"), dict),
              ("history", data.get("history"), list))
    for name, value, kind in shapes:
        if not isinstance(value, kind):
            raise ImageError(f"image config's {name!r} is a JSON {_json_kind(value)}, not "
                             f"{'an object' if kind is dict else 'a list'}")
    diff_ids = data["rootfs"].get("diff_ids")
    if diff_ids is not None and (not isinstance(diff_ids, list)
                                 or not all(isinstance(d, str) for d in diff_ids)):
        raise ImageError("image config's 'rootfs.diff_ids' must be a list of strings")
    if not all(isinstance(h, dict) for h in data["history"]):
        raise ImageError("image config's 'history' entries must be objects")
    for key in ("Env", "Entrypoint", "Cmd", "OnBuild", "Shell"):
        value = data["config"].get(key)
        if value is not None and (not isinstance(value, list)
                                  or not all(isinstance(v, str) for v in value)):
            raise ImageError(f"image config's 'config.{key}' must be a list of strings")
    for key in ("Labels", "ExposedPorts", "Volumes"):
        value = data["config"].get(key)
        if value is not None and not isinstance(value, dict):
            raise ImageError(f"image config's 'config.{key}' must be an object")


def _json_kind(value: Any) -> str:
    """``string``, ``list``, ... : JSON's name for the type of a parsed value."""
    names = {str: "string", list: "list", dict: "object", bool: "boolean", int: "number",
             float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _load_json(body: bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ImageError(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise ImageError(f"{what} is not valid JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise ImageError(f"{what} is not a JSON object")
    return data
