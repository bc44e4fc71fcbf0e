"""Base images for tests, made on this machine and never pulled from the internet.

These are the independent checkers' images: they are written by hand with ``tarfile``, ``gzip``
and ``hashlib`` following the OCI image-layout spec, and pushed with skopeo, so nothing here
shares code with kiln's own ``executor``/``snapshot`` packages. A bug in kiln's layer or manifest
code therefore cannot hide itself by also being in the base image the tests start from.

Layers are deterministic: entries sorted by path, one fixed mtime, numeric owners with empty
uname/gname, and no ``/`` or ``.`` entry (real images never have one; ``umoci insert`` does).
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from tests.support.runtime import require_tool

#: The mtime of every entry the layer writer produces (2023-11-14T22:13:20Z).
FIXED_MTIME = 1_700_000_000
#: The ``created`` time of configs and history entries, matching ``FIXED_MTIME``.
FIXED_CREATED = "2023-11-14T22:13:20Z"

MEDIA_TYPE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_TYPE_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"

BUSYBOX_BINARY = Path("/bin/busybox")
BUSYBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: What ``make_busybox_rootfs`` writes to ``/etc/motd``; tests compare against it.
BUSYBOX_MOTD = "kiln busybox test image\n"
#: What ``make_busybox_rootfs`` writes to ``/usr/share/doc/base.txt``.
BUSYBOX_BASE_TXT = "a file of the base layer\n"

DEBIAN_SUITE = "bookworm"
DEBIAN_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
#: Kept between test runs: debootstrap's .deb cache and the finished, normalised rootfs layer.
CACHE_DIR = Path("/var/cache/kiln-tests")

EntryKind = Literal["file", "dir", "symlink", "hardlink", "fifo", "chardev", "blockdev"]

_TAR_TYPES: dict[str, bytes] = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "fifo": tarfile.FIFOTYPE,
    "chardev": tarfile.CHRTYPE,
    "blockdev": tarfile.BLKTYPE,
}


@dataclass(frozen=True)
class TarEntry:
    """One entry of a hand-made layer; ``path`` is relative to the image root (``etc/motd``).

    Build them with the class methods: ``TarEntry.file("etc/motd", b"hi")``,
    ``TarEntry.whiteout("etc/motd")``, ``TarEntry.opaque("var/lib")``.
    """

    path: str
    kind: EntryKind = "file"
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    linkname: str = ""
    mtime: int = FIXED_MTIME
    devmajor: int = 0
    devminor: int = 0
    xattrs: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def file(cls, path: str, data: bytes | str = b"", mode: int = 0o644, uid: int = 0,
             gid: int = 0, **kw: Any) -> TarEntry:
        if isinstance(data, str):
            data = data.encode()
        return cls(path, "file", data, mode, uid, gid, **kw)

    @classmethod
    def dir(cls, path: str, mode: int = 0o755, uid: int = 0, gid: int = 0, **kw: Any) -> TarEntry:
        return cls(path, "dir", b"", mode, uid, gid, **kw)

    @classmethod
    def symlink(cls, path: str, target: str, uid: int = 0, gid: int = 0, **kw: Any) -> TarEntry:
        return cls(path, "symlink", b"", 0o777, uid, gid, linkname=target, **kw)

    @classmethod
    def hardlink(cls, path: str, target: str, **kw: Any) -> TarEntry:
        """A hard link to ``target``, an earlier entry of the same layer (relative path)."""
        return cls(path, "hardlink", b"", 0o644, linkname=target.lstrip("/"), **kw)

    @classmethod
    def whiteout(cls, path: str) -> TarEntry:
        """The OCI whiteout deleting ``path`` from the layers below: ``dir/.wh.name``."""
        parent, _, name = path.strip("/").rpartition("/")
        return cls.file(f"{parent}/.wh.{name}" if parent else f".wh.{name}", b"", 0o600)

    @classmethod
    def opaque(cls, directory: str) -> TarEntry:
        """The opaque whiteout hiding everything below ``directory`` from the layers below."""
        return cls.file(f"{directory.strip('/')}/.wh..wh..opq", b"", 0o600)


LayerSource = Sequence[TarEntry] | Path


@dataclass(frozen=True)
class LayerBlob:
    """A layer as written into a layout: its blob digest, size, media type, and DiffID."""

    digest: str
    size: int
    diff_id: str
    media_type: str


def _normalise_name(path: str) -> str:
    name = path.strip("/")
    while name.startswith("./"):
        name = name[2:]
    if name in ("", "."):
        raise ValueError(f"layer entry {path!r} names the root; real images never have one")
    return name


def _tarinfo(entry: TarEntry) -> tarfile.TarInfo:
    info = tarfile.TarInfo(_normalise_name(entry.path))
    info.type = _TAR_TYPES[entry.kind]
    info.mode = entry.mode & 0o7777
    info.uid, info.gid = entry.uid, entry.gid
    info.uname = info.gname = ""
    info.mtime = entry.mtime
    info.linkname = entry.linkname
    info.devmajor, info.devminor = entry.devmajor, entry.devminor
    info.size = len(entry.data) if entry.kind == "file" else 0
    if entry.xattrs:
        info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in entry.xattrs.items()}
    return info


def _entries_from_dir(root: Path) -> Iterator[tuple[tarfile.TarInfo, Path | None]]:
    """Tar headers for everything below ``root`` (not ``root`` itself), sorted by path.

    Owners and modes come from the files; the mtime is fixed. A file seen again through another
    hard link becomes a link entry to the first path, as Docker and umoci write them.
    """
    seen_inodes: dict[tuple[int, int], str] = {}
    paths = sorted(
        (p for p in root.rglob("*")), key=lambda p: p.relative_to(root).as_posix()
    )
    for path in paths:
        name = path.relative_to(root).as_posix()
        st = path.lstat()
        info = tarfile.TarInfo(name)
        info.mode = stat.S_IMODE(st.st_mode)
        info.uid, info.gid = st.st_uid, st.st_gid
        info.uname = info.gname = ""
        info.mtime = FIXED_MTIME
        source: Path | None = None
        if stat.S_ISDIR(st.st_mode):
            info.type = tarfile.DIRTYPE
        elif stat.S_ISLNK(st.st_mode):
            info.type = tarfile.SYMTYPE
            info.linkname = os.readlink(path)
        elif stat.S_ISREG(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in seen_inodes:
                info.type = tarfile.LNKTYPE
                info.linkname = seen_inodes[key]
            else:
                seen_inodes[key] = name
                info.type = tarfile.REGTYPE
                info.size = st.st_size
                source = path
        elif stat.S_ISFIFO(st.st_mode):
            info.type = tarfile.FIFOTYPE
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            info.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
            info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        else:  # sockets cannot be stored in a tar
            continue
        yield info, source


class BinaryWriter(Protocol):
    """Where a layer tar goes: a file, a ``GzipFile``, or a hashing pass-through."""

    def write(self, data: bytes, /) -> int: ...

    def tell(self) -> int: ...


def write_layer_tar(out: BinaryWriter, layer: LayerSource) -> None:
    """Write ``layer`` (tar entries, or a rootfs directory) as an uncompressed tar to ``out``."""
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        if isinstance(layer, Path):
            for info, source in _entries_from_dir(layer):
                if source is None:
                    tar.addfile(info)
                else:
                    with source.open("rb") as f:
                        tar.addfile(info, f)
            return
        for entry in sorted(layer, key=lambda e: _normalise_name(e.path)):
            tar.addfile(_tarinfo(entry), io.BytesIO(entry.data) if entry.kind == "file" else None)


class _HashingWriter:
    """A write-only stream that hashes and counts what passes through to ``inner``."""

    def __init__(self, inner: BinaryWriter) -> None:
        self.inner = inner
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        self.inner.write(data)
        return len(data)

    def tell(self) -> int:  # tarfile asks where it starts
        return self.size


def _write_blob_file(layout: Path, tmp: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    with tmp.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    hexdigest = digest.hexdigest()
    dest = layout / "blobs" / "sha256" / hexdigest
    size = tmp.stat().st_size
    tmp.replace(dest)
    return f"sha256:{hexdigest}", size


def _write_blob_bytes(layout: Path, data: bytes) -> tuple[str, int]:
    hexdigest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / hexdigest).write_bytes(data)
    return f"sha256:{hexdigest}", len(data)


def _gzip_diff_id(path: Path) -> str:
    sha = hashlib.sha256()
    with gzip.open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
    return f"sha256:{sha.hexdigest()}"


def write_layer_blob(
    layout_dir: Path, layer: LayerSource, compression: Literal["gzip", "none"] = "gzip"
) -> LayerBlob:
    """Write one layer into ``layout_dir/blobs/sha256`` and describe it.

    ``layer`` is a list of ``TarEntry``, a rootfs directory, or a ready ``.tar.gz`` file (used
    as the blob unchanged, e.g. the cached Debian layer).
    """
    blobs = layout_dir / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    fd, tmpname = tempfile.mkstemp(dir=blobs, prefix=".tmp-")
    tmp = Path(tmpname)
    try:
        if isinstance(layer, Path) and layer.is_file():
            os.close(fd)
            shutil.copyfile(layer, tmp)
            diff_id = _gzip_diff_id(tmp)
            digest, size = _write_blob_file(layout_dir, tmp)
            return LayerBlob(digest, size, diff_id, MEDIA_TYPE_LAYER_GZIP)
        with os.fdopen(fd, "wb") as raw:
            if compression == "gzip":
                # filename="" and mtime=0 keep the gzip header free of anything that varies.
                with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                                   compresslevel=6) as gz:
                    hashing = _HashingWriter(gz)
                    write_layer_tar(hashing, layer)
            else:
                hashing = _HashingWriter(raw)
                write_layer_tar(hashing, layer)
        diff_id = f"sha256:{hashing.sha.hexdigest()}"
        digest, size = _write_blob_file(layout_dir, tmp)
    finally:
        tmp.unlink(missing_ok=True)
    media_type = MEDIA_TYPE_LAYER_GZIP if compression == "gzip" else MEDIA_TYPE_LAYER_TAR
    return LayerBlob(digest, size, diff_id, media_type)


def _canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def write_oci_layout_from_layers(
    layout_dir: Path,
    tag: str,
    layers: Sequence[LayerSource],
    config: Mapping[str, Any],
    *,
    architecture: str = "amd64",
    os_name: str = "linux",
    history: Sequence[Mapping[str, Any]] | None = None,
    compression: Literal["gzip", "none"] = "gzip",
    image_config_extra: Mapping[str, Any] | None = None,
) -> str:
    """Write an OCI image layout holding one image tagged ``tag``; return the manifest digest.

    ``layers`` are bottom first; each is a list of ``TarEntry``, a rootfs directory, or a ready
    ``.tar.gz``. ``config`` is the image config's ``config`` object (``Env``, ``Cmd``,
    ``WorkingDir``, ...); ``image_config_extra`` adds top-level fields. An existing layout keeps
    its other tags, so several images can share one layout.
    """
    layout_dir.mkdir(parents=True, exist_ok=True)
    (layout_dir / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout_dir / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    blobs = [write_layer_blob(layout_dir, layer, compression) for layer in layers]
    if history is None:
        history = [
            {"created": FIXED_CREATED, "created_by": f"kiln tests: layer {i}"}
            for i in range(len(blobs))
        ]
    image_config: dict[str, Any] = {
        "created": FIXED_CREATED,
        "architecture": architecture,
        "os": os_name,
        "config": dict(config),
        "rootfs": {"type": "layers", "diff_ids": [b.diff_id for b in blobs]},
        "history": [dict(h) for h in history],
    }
    image_config.update(image_config_extra or {})
    config_digest, config_size = _write_blob_bytes(layout_dir, _canonical_json(image_config))
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "config": {"mediaType": MEDIA_TYPE_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [
            {"mediaType": b.media_type, "digest": b.digest, "size": b.size} for b in blobs
        ],
    }
    manifest_digest, manifest_size = _write_blob_bytes(layout_dir, _canonical_json(manifest))
    index_path = layout_dir / "index.json"
    index: dict[str, Any] = (
        json.loads(index_path.read_text())
        if index_path.exists()
        else {"schemaVersion": 2, "manifests": []}
    )
    index["manifests"] = [
        m for m in index["manifests"]
        if m.get("annotations", {}).get(REF_NAME_ANNOTATION) != tag
    ] + [{
        "mediaType": MEDIA_TYPE_MANIFEST,
        "digest": manifest_digest,
        "size": manifest_size,
        "annotations": {REF_NAME_ANNOTATION: tag},
    }]
    index_path.write_text(json.dumps(index, indent=2))
    return manifest_digest


def push_layout(
    layout_dir: Path, tag: str, ref: str, *, format: Literal["oci", "v2s2"] | None = None
) -> str:
    """Push ``oci:layout_dir:tag`` to ``docker://ref`` over plain HTTP and return ``ref``.

    ``format="v2s2"`` converts to Docker media types on the way (schema 2 manifest,
    ``application/vnd.docker.image.rootfs.diff.tar.gzip`` layers); ``None`` keeps the OCI ones.
    """
    require_tool("skopeo", "skopeo")
    cmd = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false"]
    if format is not None:
        cmd += ["--format", format]
    cmd += [f"oci:{layout_dir}:{tag}", f"docker://{ref}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"skopeo copy to {ref} failed ({proc.returncode}): {proc.stderr}")
    return ref


# --- busybox ------------------------------------------------------------------------------


def _write_text(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def make_busybox_rootfs(root: Path) -> Path:
    """Fill ``root`` with a busybox userland and return it.

    ``/bin/busybox`` comes from Debian's busybox-static, with an absolute symlink per applet at
    the path ``busybox --list-full`` names (``bin/sh``, ``usr/bin/env``, ...). Users: root,
    ``kiln`` (1000:1000, home ``/home/kiln``) and ``nobody``. ``/etc/motd`` and
    ``/usr/share/doc/base.txt`` are there for tests to change or delete.
    """
    if not BUSYBOX_BINARY.is_file():
        raise RuntimeError(f"{BUSYBOX_BINARY} is missing (apt-get install busybox-static)")
    root.mkdir(parents=True, exist_ok=True)
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "usr/share/doc", "etc", "var", "dev",
              "proc", "sys", "home"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX_BINARY, root / "bin" / "busybox")
    (root / "bin" / "busybox").chmod(0o755)
    applets = subprocess.run(
        [str(BUSYBOX_BINARY), "--list-full"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in applets:
        if applet == "bin/busybox":
            continue
        link = root / applet
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to("/bin/busybox")
    _write_text(root / "etc/passwd",
                "root:x:0:0:root:/root:/bin/sh\n"
                "kiln:x:1000:1000:kiln:/home/kiln:/bin/sh\n"
                "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
    _write_text(root / "etc/group", "root:x:0:\nkiln:x:1000:\nnogroup:x:65534:\n")
    _write_text(root / "etc/shadow", "root:*:19000::::::\nkiln:*:19000::::::\n"
                "nobody:*:19000::::::\n", 0o640)
    _write_text(root / "etc/motd", BUSYBOX_MOTD)
    _write_text(root / "etc/hostname", "kiln\n")
    _write_text(root / "usr/share/doc/base.txt", BUSYBOX_BASE_TXT)
    (root / "tmp").mkdir(exist_ok=True)
    (root / "tmp").chmod(0o1777)
    (root / "root").mkdir(exist_ok=True)
    (root / "root").chmod(0o700)
    home = root / "home" / "kiln"
    home.mkdir(exist_ok=True)
    _write_text(home / ".profile", "export PS1='$ '\n")
    for p in (home, home / ".profile"):
        os.lchown(p, 1000, 1000)
    return root


def busybox_config(**overrides: Any) -> dict[str, Any]:
    """The ``config`` object of the busybox test image: ``PATH`` set, ``Cmd ["sh"]``."""
    return {"Env": [f"PATH={BUSYBOX_PATH}"], "Cmd": ["sh"], **overrides}


def write_busybox_layout(layout_dir: Path, tag: str = "latest") -> str:
    """Write the one-layer busybox image into ``layout_dir``; return its manifest digest."""
    with tempfile.TemporaryDirectory(prefix="kiln-busybox-") as tmp:
        rootfs = make_busybox_rootfs(Path(tmp) / "rootfs")
        return write_oci_layout_from_layers(
            layout_dir, tag, [rootfs], busybox_config(),
            history=[{"created": FIXED_CREATED, "created_by": "kiln tests: busybox rootfs"}],
        )


# --- debian -------------------------------------------------------------------------------


def debian_mirror(sources: Path = DEBIAN_SOURCES) -> str:
    """The first ``URIs:`` of a deb822 sources file whose suites include bookworm itself."""
    for stanza in sources.read_text().split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            key, sep, value = line.partition(":")
            if sep and not line.startswith((" ", "#")):
                fields[key.strip()] = value.strip()
        if DEBIAN_SUITE in fields.get("Suites", "").split() and fields.get("URIs"):
            return fields["URIs"].split()[0]
    raise RuntimeError(f"{sources}: no deb822 stanza for suite {DEBIAN_SUITE}")


@contextlib.contextmanager
def _cache_lock(name: str) -> Iterator[None]:
    """An exclusive lock so concurrent test sessions build the Debian cache only once."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with (CACHE_DIR / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _strip_debootstrap_leftovers(root: Path) -> None:
    """Empty what a runtime provides (/dev, /proc, /sys) and what Debian's images leave out.

    Docker's ``debian`` images ship without apt lists (50 MB) or downloaded .debs; tests that
    need packages run ``apt-get update`` like a real Dockerfile would.
    """
    for rel in ("dev", "proc", "sys", "var/lib/apt/lists"):
        directory = root / rel
        for child in directory.iterdir() if directory.is_dir() else ():
            if child.name == "partial" and rel == "var/lib/apt/lists":
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()


def debian_layer(cache_dir: Path = CACHE_DIR) -> Path:
    """The normalised Debian bookworm minbase layer (``.tar.gz``), built once and cached.

    The first call runs ``debootstrap --variant=minbase`` (about 30 s, .debs cached under
    ``cache_dir/debootstrap``); later calls, in this and later sessions, return the cached file.
    """
    layer = cache_dir / f"debian-{DEBIAN_SUITE}-minbase.tar.gz"
    if layer.is_file():
        return layer
    require_tool("debootstrap", "debootstrap")
    with _cache_lock("debian"):
        if layer.is_file():
            return layer
        debs = cache_dir / "debootstrap"
        debs.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="kiln-debootstrap-") as tmp:
            rootfs = Path(tmp) / "rootfs"
            proc = subprocess.run(
                ["debootstrap", "--variant=minbase", f"--cache-dir={debs}", DEBIAN_SUITE,
                 str(rootfs), debian_mirror()],
                capture_output=True, text=True, check=False,
            )
            if proc.returncode != 0:
                log = rootfs / "debootstrap" / "debootstrap.log"
                detail = log.read_text()[-4000:] if log.exists() else proc.stdout[-4000:]
                raise RuntimeError(
                    f"debootstrap failed ({proc.returncode}): {proc.stderr}\n{detail}"
                )
            _strip_debootstrap_leftovers(rootfs)
            partial = layer.with_suffix(f".partial-{os.getpid()}")
            try:
                with partial.open("wb") as raw, gzip.GzipFile(
                    filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6
                ) as gz:
                    write_layer_tar(gz, rootfs)
                partial.replace(layer)
            finally:
                partial.unlink(missing_ok=True)
    return layer


def make_debian_rootfs(root: Path) -> Path:
    """Fill ``root`` with a Debian bookworm minbase system (from the cached layer)."""
    layer = debian_layer()
    root.mkdir(parents=True, exist_ok=True)
    require_tool("tar", "tar")
    subprocess.run(
        ["tar", "--numeric-owner", "--same-permissions", "--xattrs", "-xzf", str(layer),
         "-C", str(root)],
        check=True,
    )
    return root


def debian_config() -> dict[str, Any]:
    return {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["bash"]}


def write_debian_layout(layout_dir: Path, tag: str = "latest") -> str:
    """Write the one-layer Debian image into ``layout_dir``; return its manifest digest."""
    return write_oci_layout_from_layers(
        layout_dir, tag, [debian_layer()], debian_config(),
        history=[{"created": FIXED_CREATED,
                  "created_by": f"debootstrap --variant=minbase {DEBIAN_SUITE}"}],
    )


# Three layers with every whiteout and replacement case an extractor must get right: a file
# whited out, a directory made opaque, file -> dir, symlink -> dir, a hard link's name removed,
# symlink -> file, dir -> file, dir -> symlink, a whole directory whited out and re-created.
WHITEOUT_CASE_LAYERS: list[list[TarEntry]] = [
    [TarEntry.dir("etc"), TarEntry.file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
     TarEntry.file("etc/group", "root:x:0:\n", mode=0o640, gid=42),
     TarEntry.dir("usr"), TarEntry.dir("usr/bin"),
     TarEntry.file("usr/bin/su", b"su", mode=0o4755),
     TarEntry.hardlink("usr/bin/sudo", "usr/bin/su"),
     TarEntry.dir("usr/lib"), TarEntry.file("usr/lib/libc.so", b"libc"),
     TarEntry.symlink("lib", "usr/lib"), TarEntry.dir("var"), TarEntry.dir("var/cache"),
     TarEntry.file("var/cache/a", b"a"), TarEntry.dir("var/cache/sub"),
     TarEntry.file("var/cache/sub/b", b"b"), TarEntry.dir("tmp", mode=0o1777),
     TarEntry.file("opt", b"a file first"), TarEntry.dir("srv"),
     TarEntry.symlink("srv/link", "/etc"), TarEntry("run/fifo", "fifo", mode=0o600),
     TarEntry.file("etc/attr", b"x", xattrs={"user.kiln": "1"}),
     TarEntry.dir("home"), TarEntry.dir("home/app", uid=1000, gid=1000, mode=0o700),
     TarEntry.file("home/app/.profile", b"p", uid=1000, gid=1000)],
    # file -> whiteout, dir -> opaque dir, file -> dir, symlink -> dir, hardlink source removed
    [TarEntry.whiteout("etc/group"), TarEntry.dir("var/cache"),
     TarEntry.opaque("var/cache"), TarEntry.file("var/cache/new", b"n"),
     TarEntry.dir("opt", mode=0o700), TarEntry.file("opt/tool", b"t", mode=0o755, uid=1000),
     TarEntry.dir("lib"), TarEntry.file("lib/own", b"o"),
     TarEntry.whiteout("usr/bin/sudo"), TarEntry.file("etc/passwd", "root:x:0:0:new:/:/bin/sh\n"),
     TarEntry.file("srv/link", b"symlink became a file")],
    # dir -> file, dir -> symlink, whole dir whited out, a path re-created after a whiteout
    [TarEntry.whiteout("usr/lib"), TarEntry.file("usr/lib", b"was a directory"),
     TarEntry.whiteout("opt"), TarEntry.symlink("opt", "/usr"),
     TarEntry.whiteout("home"), TarEntry.dir("home"), TarEntry.file("home/new", b"again")],
]
