"""Entry names resolved inside the root, as a process chrooted there would resolve them.

The path half of extraction, kept apart from the tar reader (:mod:`snapshot.tarstream`) and from
applying entries (:mod:`snapshot.extract`), as umoci keeps its secure join apart. Each name is
resolved component by component from a directory already verified (a real directory reached
without leaving the root); a symlink is followed inside the root only, and the comments say
which attack each check stops. :class:`RootResolver` is the applier's base: the applier owns the
state (the verified directories, what it wrote) and the hooks resolution calls back.
"""

from __future__ import annotations

import os
import posixpath
import stat
from typing import Protocol

from snapshot.tarstream import show_name

_PATH_MAX = 4095  # bytes in a path the kernel accepts (PATH_MAX 4096 less the NUL)
_MAX_LINKS = 40  # symlinks followed in one lookup before the kernel says ELOOP


class Ignores(Protocol):
    """What extraction needs of :class:`snapshot.ignore.IgnoreList`."""

    def is_ignored(self, rel: str) -> bool: ...

    def may_ignore_in(self, directory: str) -> bool: ...


class Refused(Exception):
    """Why an entry or a hardlink target cannot be applied; the caller adds the names."""

    def __init__(self, reason: str, *, unsafe: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.unsafe = unsafe


class Missing(Exception):
    """A directory on the way does not exist (and was not to be created)."""


class RootResolver:
    """Resolution of entry names under ``root``, with a cache of verified directories.

    The applier sets the attributes and provides the hooks: ``settle`` (wait for files handed
    to helpers), ``made_dir`` and ``mark_upper`` (bookkeeping of what the layer wrote).
    """

    root: str
    prefix: str
    ignore: Ignores
    chroot: bool
    # Entry-name directory -> its verified real path under the root ("" is the root).
    dirs: dict[str, str]
    inflight: set[str]

    def settle(self) -> None:
        raise NotImplementedError

    def made_dir(self, rel: str) -> None:
        raise NotImplementedError

    def mark_upper(self, rel: str) -> None:
        raise NotImplementedError

    def host(self, rel: str) -> str:
        return self.prefix + rel if rel else self.root

    def forget_dirs(self) -> None:
        """A directory or symlink was removed or replaced: cached resolutions may be stale."""
        self.dirs = {"": ""}

    def resolve_dir(self, name: str, *, create: bool) -> str | None:
        """The real path of directory ``name`` (an entry name), or None if it is ignored.

        Raises :class:`Refused` when resolving it would leave the root, :class:`Missing`
        when a component does not exist and ``create`` is false.
        """
        cached = self.dirs.get(name)
        if cached is not None:
            return cached
        # Start from the longest cached ancestor: usually the parent, a single step left.
        start, rest = "", name
        cut = len(name)
        while (cut := name.rfind("/", 0, cut)) > 0:
            hit = self.dirs.get(name[:cut])
            if hit is not None:
                start, rest = hit, name[cut + 1:]
                break
        real = self.walk(start, rest.split("/"), create=create)
        if real is not None:
            self.dirs[name] = real
        return real

    def walk(self, real: str, parts: list[str], *, create: bool) -> str | None:
        """Resolve ``parts`` from the verified directory ``real`` with chroot semantics."""
        parts.reverse()  # a stack: the next component is at the end
        followed = 0
        via = ""
        prefix = self.prefix
        is_ignored = self.ignore.is_ignored
        while parts:
            part = parts.pop()
            if part == "" or part == ".":
                continue
            if part == "..":
                # Stops a symlink such as "evil -> ../.." from taking a later entry above the
                # root. Entry names were normalised, so ".." here comes from a link target;
                # real holds no symlink, so its lexical parent is its real parent.
                if not real:
                    if self.chroot:
                        continue  # a chroot's "/.." is "/"
                    raise Refused(f"escapes the root through symlink {show_name(via)}")
                real = real.rpartition("/")[0]
                continue
            candidate = real + "/" + part if real else part
            if is_ignored(candidate):
                return None
            host = prefix + candidate
            if candidate in self.inflight:
                self.settle()
            try:
                st = os.lstat(host)
            except FileNotFoundError:
                if not create:
                    raise Missing(candidate) from None
                # A missing parent is created, as containerd does (0755, owned by us).
                os.mkdir(host, 0o755)
                self.made_dir(candidate)
                self.mark_upper(candidate)
                real = candidate
                continue
            if stat.S_ISDIR(st.st_mode):
                real = candidate
            elif stat.S_ISLNK(st.st_mode):
                # A symlink on disk or written by this layer is followed inside the root only:
                # an absolute target ("-> /", "-> /etc") restarts at the root, not at the
                # host's "/", which stops a layer from writing to the host through it.
                followed += 1
                if followed > _MAX_LINKS:
                    raise Refused(f"passes through more than {_MAX_LINKS} symlinks")
                target = os.readlink(host)
                if target.startswith("/"):
                    real = ""
                via = candidate
                parts.extend(reversed(target.split("/")))
            else:
                raise Refused(f"needs {show_name(candidate)} to be a directory, and it is not",
                               unsafe=False)
        return real

    def normalise(self, name: str) -> str:
        """``./usr//bin/`` -> ``usr/bin``; ``""`` is the root. Refuses names that leave it."""
        if name.startswith("/") and not self.chroot:
            # Stops "/etc/passwd" from naming the host's file by whatever joins it later.
            raise Refused("is an absolute path")
        if len(name) > _PATH_MAX or (not name.isascii() and len(
                name.encode("utf-8", "surrogateescape")) > _PATH_MAX):
            # Stops a 10 MB name from reaching the kernel (and the error message) whole.
            size = len(name.encode("utf-8", "surrogateescape"))
            raise Refused(f"has a name of {size} bytes, longer than a path may be "
                           f"({_PATH_MAX})", unsafe=False)
        if "\0" in name:
            raise Refused("has a NUL byte in its name", unsafe=False)
        if self.chroot:
            # Resolved against a chroot's "/": "/etc/x" and "../x" both stay inside.
            return posixpath.normpath("/" + name.lstrip("/")).lstrip("/")
        if "/." in name or "//" in name or name.startswith(".") or name.endswith("/"):
            name = posixpath.normpath(name)
            if name == ".":
                return ""
            if name == ".." or name.startswith("../"):
                # Stops "../../etc/passwd": lexically above the root before any symlink.
                raise Refused("escapes the root")
        return name
