"""Layer tars made with :mod:`tarfile`, hostile and ordinary, for the extraction tests.

Each builder returns one member; :func:`layer` joins members into an uncompressed layer stream.
The hostile corpus at the end names, for each attack, the entries a malicious image would ship;
``outside`` is a host directory next to the root (the tests keep a canary there).
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass

MTIME = 1_700_000_000


@dataclass(frozen=True)
class Member:
    info: tarfile.TarInfo
    data: bytes = b""


def _info(name: str, kind: bytes, *, mode: int, uid: int = 0, gid: int = 0,
          mtime: int = MTIME, pax: dict[str, str] | None = None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.mtime = mtime
    if pax:
        info.pax_headers = dict(pax)
    return info


def file(name: str, data: bytes = b"", *, mode: int = 0o644, uid: int = 0, gid: int = 0,
         mtime: int = MTIME, pax: dict[str, str] | None = None) -> Member:
    info = _info(name, tarfile.REGTYPE, mode=mode, uid=uid, gid=gid, mtime=mtime, pax=pax)
    info.size = len(data)
    return Member(info, data)


def directory(name: str, *, mode: int = 0o755, uid: int = 0, gid: int = 0, mtime: int = MTIME,
              pax: dict[str, str] | None = None) -> Member:
    return Member(_info(name, tarfile.DIRTYPE, mode=mode, uid=uid, gid=gid, mtime=mtime,
                        pax=pax))


def symlink(name: str, target: str, *, uid: int = 0, gid: int = 0,
            mtime: int = MTIME) -> Member:
    info = _info(name, tarfile.SYMTYPE, mode=0o777, uid=uid, gid=gid, mtime=mtime)
    info.linkname = target
    return Member(info)


def hardlink(name: str, target: str) -> Member:
    info = _info(name, tarfile.LNKTYPE, mode=0o644)
    info.linkname = target
    return Member(info)


def fifo(name: str, *, mode: int = 0o644, mtime: int = MTIME) -> Member:
    return Member(_info(name, tarfile.FIFOTYPE, mode=mode, mtime=mtime))


def char_device(name: str, major: int, minor: int, *, mode: int = 0o666) -> Member:
    info = _info(name, tarfile.CHRTYPE, mode=mode)
    info.devmajor, info.devminor = major, minor
    return Member(info)


def whiteout(path: str) -> Member:
    """The OCI whiteout deleting ``path`` from lower layers."""
    parent, _, name = path.rpartition("/")
    return file(f"{parent}/.wh.{name}" if parent else f".wh.{name}")


def opaque(directory_path: str) -> Member:
    """The OCI opaque marker hiding ``directory_path``'s lower-layer content."""
    return file(f"{directory_path}/.wh..wh..opq")


def layer(*members: Member, format: int = tarfile.PAX_FORMAT) -> bytes:
    """An uncompressed layer tar holding ``members`` in order."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=format) as tar:
        for member in members:
            tar.addfile(member.info, io.BytesIO(member.data) if member.data else None)
    return out.getvalue()


# --- the hostile corpus -------------------------------------------------------------------


def dotdot_name() -> bytes:
    return layer(file("../../etc/passwd", b"root::0:0::/:/bin/sh\n"))


def dotdot_to_canary() -> bytes:
    return layer(file("../outside/canary", b"pwned"))


def dotdot_inside_name() -> bytes:
    return layer(directory("a"), file("a/../../outside/canary", b"pwned"))


def absolute_name(outside: str) -> bytes:
    return layer(file(f"{outside}/canary", b"pwned"))


def symlink_to_slash_then_file() -> bytes:
    """``rootlink -> /`` then ``rootlink/etc/passwd``: chroot semantics keep it in the root."""
    return layer(symlink("rootlink", "/"), file("rootlink/etc/passwd", b"inside\n"))


def absolute_symlink_to_outside_then_file(outside: str) -> bytes:
    """A link naming the host directory of the canary, then a file through it."""
    return layer(symlink("out", outside), file("out/canary", b"pwned"))


def symlink_climbing_then_file(target: str = "..") -> bytes:
    """``up -> ..`` then ``up/outside/canary``: resolution would climb above the root."""
    return layer(symlink("up", target), file("up/outside/canary", b"pwned"))


def nested_symlink_climbing_then_file() -> bytes:
    return layer(directory("a"), directory("a/b"), symlink("a/b/up", "../../.."),
                 file("a/b/up/outside/canary", b"pwned"))


def symlink_climbing_then_directory() -> bytes:
    return layer(symlink("up", "../.."), directory("up/outside", mode=0o777))


def hardlink_dotdot() -> bytes:
    return layer(hardlink("stolen", "../outside/canary"))


def hardlink_absolute(outside: str) -> bytes:
    return layer(hardlink("stolen", f"{outside}/canary"))


def hardlink_through_climbing_symlink() -> bytes:
    return layer(symlink("up", "../.."), hardlink("stolen", "up/outside/canary"))


def hardlink_through_absolute_symlink(outside: str) -> bytes:
    """The link resolves inside the root, where no such file exists."""
    return layer(symlink("out", outside), hardlink("stolen", "out/canary"))


def symlink_loop() -> bytes:
    return layer(symlink("a", "b"), symlink("b", "a"), file("a/x", b"x"))


def whiteout_of_dotdot() -> bytes:
    return layer(directory("a"), file("a/.wh...", b""))


def whiteout_of_dot() -> bytes:
    return layer(directory("a"), file("a/.wh..", b""))


def whiteout_of_nothing() -> bytes:
    return layer(file(".wh.", b""))


def whiteout_climbing() -> bytes:
    return layer(file("a/.wh.x/../../../outside/.wh.canary", b""))


def whiteout_through_climbing_symlink() -> bytes:
    return layer(symlink("up", "../.."), file("up/outside/.wh.canary", b""))


def device_node() -> bytes:
    return layer(directory("dev"), char_device("dev/mem", 1, 1, mode=0o600))


def huge_name(size: int = 10 * 1024 * 1024) -> bytes:
    return layer(file("a" * size, b"x"))


def truncated(cut: int = 700) -> bytes:
    """A layer cut in the middle of its second entry's data."""
    whole = layer(file("small", b"s"), file("big", b"b" * 4096))
    return whole[:1024 + 512 + cut]
