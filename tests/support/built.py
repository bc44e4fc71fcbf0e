"""Build a Dockerfile with ``--no-push --tar-path`` and read back what went into the image.

For tests of Dockerfile behaviour that need no registry peer on the output side: the image's
config and the entries of each new layer are read from the docker-save tarball, and the root of
the sandbox build (kept after the build) shows the final filesystem.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from tests.support.kiln import ExecutorRun, run_executor, write_context


@dataclass
class Built:
    """A finished build: the executor's result, its root, config and layers (bottom first)."""

    run: ExecutorRun
    root: Path
    tar_path: Path
    config: dict[str, Any] = field(default_factory=dict)
    layers: list[dict[str, tarfile.TarInfo]] = field(default_factory=list)
    contents: list[dict[str, bytes]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.run.exit_code == 0

    def new_layers(self, base_layers: int) -> list[dict[str, tarfile.TarInfo]]:
        return self.layers[base_layers:]

    def history(self) -> list[str]:
        return [h.get("created_by", "") for h in self.config.get("history", [])]


def build(tmp: Path, dockerfile: str, files: Mapping[str, str | bytes] | None = None,
          *args: str) -> Built:
    """Build ``dockerfile`` with a context holding ``files``; reads the result if it built."""
    text_files = {k: v for k, v in (files or {}).items() if isinstance(v, str)}
    context = write_context(tmp / "context", dockerfile, text_files)
    for rel, data in (files or {}).items():
        if isinstance(data, bytes):
            path = context / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    tar_path = tmp / "image.tar"
    root = tmp / "root"
    result = run_executor(context, root, "--no-push", "--tar-path", str(tar_path),
                          "--insecure-pull", *args)
    built = Built(result, root, tar_path)
    if result.exit_code == 0:
        _read_tarball(built)
    return built


def _read_tarball(built: Built) -> None:
    with tarfile.open(built.tar_path) as outer:
        manifest = json.load(_member(outer, "manifest.json"))[0]
        built.config = json.load(_member(outer, manifest["Config"]))
        for name in manifest["Layers"]:
            data = _member(outer, name).read()
            entries: dict[str, tarfile.TarInfo] = {}
            contents: dict[str, bytes] = {}
            with tarfile.open(fileobj=io.BytesIO(_decompress(data))) as layer:
                for info in layer:
                    entries[info.name.rstrip("/")] = info
                    if info.isfile():
                        handle = layer.extractfile(info)
                        assert handle is not None
                        contents[info.name] = handle.read()
            built.layers.append(entries)
            built.contents.append(contents)


def _member(tar: tarfile.TarFile, name: str) -> io.BufferedReader:
    handle = tar.extractfile(name)
    assert handle is not None, name
    return handle  # type: ignore[return-value]


def _decompress(data: bytes) -> bytes:
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:4] == b"\x28\xb5\x2f\xfd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data
