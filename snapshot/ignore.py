"""The ignore list: paths under the root that are never snapshotted, written or deleted.

kiln's own directory, every mount point under the root (``/proc``, ``/sys``, ``/dev``, bind
mounts, secrets) and ``/var/run`` hold the builder's state or the host's, never the image's.
``--ignore-path`` adds more, and may be a glob. A path is ignored when it, or one of its
ancestors, is listed or matches a glob; so the walk prunes an ignored directory as a whole and
asks about each entry only once, which is why the list also answers per directory
(:meth:`IgnoreList.ignored_names_in`) and per depth (:meth:`IgnoreList.glob_at_depth`).

Globs follow Go's ``filepath.Match``, as kaniko's ``--ignore-path`` does: ``*`` and ``?`` never
cross a ``/``, ``[...]`` is a character class (``[!...]`` or ``[^...]`` negated) and ``\\``
escapes the next character.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")
_GLOB_CHARS = frozenset("*?[")
_OCTAL_ESCAPE = re.compile(rb"\\([0-7]{3})")

GlobMatcher = Callable[[str], object]
"""``re.Pattern.fullmatch`` of one depth's globs: truthy when a relative path matches."""


@dataclass(frozen=True)
class IgnoreList:
    """Relative paths (``var/run``) and globs (``tmp/x*``) left out of every snapshot."""

    root: Path
    paths: frozenset[str]
    globs: tuple[str, ...] = ()
    # Derived lookups, so the walk pays a set lookup per directory and not per entry.
    _children: dict[str, frozenset[str]] = field(init=False, repr=False, compare=False)
    _glob_by_depth: dict[int, GlobMatcher] = field(init=False, repr=False, compare=False)
    _glob_prefix: GlobMatcher | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        children: dict[str, set[str]] = {}
        for path in self.paths:
            parent, _, name = path.rpartition("/")
            children.setdefault(parent, set()).add(name)
        by_depth: dict[int, list[str]] = {}
        for glob in self.globs:
            by_depth.setdefault(glob.count("/") + 1, []).append(glob_to_regex(glob))
        object.__setattr__(self, "_children",
                           {parent: frozenset(names) for parent, names in children.items()})
        object.__setattr__(self, "_glob_by_depth", {
            depth: re.compile("|".join(f"(?:{r})" for r in regexes), re.DOTALL).fullmatch
            for depth, regexes in by_depth.items()})
        prefix = None
        if self.globs:
            # One regex for "the path or one of its ancestors matches a glob".
            alternatives = "|".join(f"(?:{glob_to_regex(g)})" for g in self.globs)
            prefix = re.compile(f"(?:{alternatives})(?:/.*)?", re.DOTALL).fullmatch
        object.__setattr__(self, "_glob_prefix", prefix)

    def is_ignored(self, rel: str) -> bool:
        """True when ``rel`` (``etc/passwd``), or a directory above it, is ignored."""
        rel = rel.strip("/")
        if self.paths:
            paths = self.paths
            candidate = rel
            while True:
                if candidate in paths:
                    return True
                cut = candidate.rfind("/")
                if cut < 0:
                    break
                candidate = candidate[:cut]
        return self._glob_prefix is not None and bool(self._glob_prefix(rel))

    def may_ignore_in(self, directory: str) -> bool:
        """Whether anything directly inside ``directory`` (itself not ignored) may be ignored.

        False lets a caller that has checked a directory skip asking about each of its entries.
        """
        return bool(self.globs) or directory in self._children

    def ignored_names_in(self, directory: str) -> frozenset[str]:
        """Names listed in ``paths`` directly inside ``directory`` (``""`` for the root).

        For a walk that has already pruned every ignored ancestor; globs are separate.
        """
        return self._children.get(directory, frozenset())

    def glob_at_depth(self, depth: int) -> GlobMatcher | None:
        """A matcher for paths with ``depth`` components (``etc/passwd`` is 2), or None."""
        return self._glob_by_depth.get(depth)

    @classmethod
    def for_build(cls, root: Path, *, kiln_dir: Path, extra: Iterable[str] = (),
                  ignore_var_run: bool = True, mounts: bool = True) -> IgnoreList:
        """The ignore list of a build whose filesystem is ``root``.

        ``extra`` holds ``--ignore-path`` values as users write them, image paths such as
        ``/tmp/x*`` (relative to ``root``, not to the host).
        """
        real_root = os.path.realpath(root)
        paths: set[str] = set()
        globs: list[str] = []
        kiln_rel = _relative_under(real_root, os.path.realpath(kiln_dir))
        if kiln_rel:
            paths.add(kiln_rel)
        if mounts:
            paths.update(mount_points_under(real_root))
        if ignore_var_run:
            paths.add("var/run")
        for raw in extra:
            rel = normalize_image_path(raw)
            if not rel:
                continue  # "/" would ignore the whole image: meaningless, so a no-op
            if _GLOB_CHARS.intersection(rel):
                globs.append(rel)
            else:
                paths.add(rel)
        return cls(root=Path(real_root), paths=frozenset(paths), globs=tuple(sorted(set(globs))))


def normalize_image_path(path: str) -> str:
    """``/tmp/x/`` or ``./tmp//x`` -> ``tmp/x``; ``/`` -> ``""``."""
    normalized = posixpath.normpath("/" + path.strip())
    return normalized.lstrip("/")


def mount_points_under(root: str, mountinfo: Path = MOUNTINFO) -> set[str]:
    """Every mount point strictly under ``root`` (an absolute real path), relative to it."""
    try:
        text = mountinfo.read_bytes()
    except OSError:
        return set()
    found: set[str] = set()
    for line in text.splitlines():
        fields = line.split(b" ")
        if len(fields) < 5:
            continue
        # The kernel writes space, tab, newline and backslash in a mount point as \ooo.
        raw = _OCTAL_ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), fields[4])
        rel = _relative_under(root, os.fsdecode(raw))
        if rel:
            found.add(rel)
    return found


def glob_to_regex(glob: str) -> str:
    """A regex for one ``filepath.Match`` pattern: ``*`` and ``?`` stay within a component."""
    out: list[str] = []
    i, n = 0, len(glob)
    while i < n:
        char = glob[i]
        i += 1
        if char == "*":
            while i < n and glob[i] == "*":
                i += 1
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "\\" and i < n:
            out.append(re.escape(glob[i]))
            i += 1
        elif char == "[":
            end = glob.find("]", i + 1 if i < n and glob[i] in "!^" else i)
            if end < 0:
                out.append(re.escape(char))
                continue
            body = glob[i:end]
            i = end + 1
            negate = body[:1] in ("!", "^")
            if negate:
                body = body[1:]
            body = body.replace("\\", "\\\\").replace("]", "\\]")
            out.append(f"[^/{body}]" if negate else f"[{body}]")
        else:
            out.append(re.escape(char))
    return "".join(out)


def _relative_under(root: str, path: str) -> str:
    """``path`` relative to ``root`` when strictly under it, else ``""``."""
    if root == "/":
        return path.strip("/")
    if path.startswith(root + "/"):
        return path[len(root) + 1:].strip("/")
    return ""
