"""The build context: the directory COPY and ADD read from, with ``.dockerignore`` applied.

Patterns follow Docker's rules (moby/patternmatcher): paths are relative to the context root
(a leading ``/`` is dropped), ``*`` and ``?`` do not cross ``/``, ``**`` matches any number of
directories, ``!`` re-includes, the last matching pattern wins, and a pattern that matches a
directory excludes everything under it. ``<Dockerfile>.dockerignore`` beside the Dockerfile takes
precedence over the context's ``.dockerignore``.
"""

from __future__ import annotations

import glob
import os
import posixpath
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from executor.errors import ContextError


@dataclass(frozen=True)
class IgnorePattern:
    """One ``.dockerignore`` line, compiled."""

    text: str
    exclusion: bool
    regex: re.Pattern[str]

    @classmethod
    def parse(cls, line: str) -> IgnorePattern | None:
        text = line.strip()
        if not text or text.startswith("#"):
            return None
        exclusion = text.startswith("!")
        if exclusion:
            text = text[1:].strip()
        text = posixpath.normpath(text.lstrip("/")) if text.lstrip("/") else "."
        return cls(text, exclusion, _compile(text))

    def matches(self, rel: str) -> bool:
        """True if the pattern matches ``rel`` or one of its parent directories."""
        if self.regex.match(rel):
            return True
        parent = rel
        while "/" in parent:
            parent = parent.rsplit("/", 1)[0]
            if self.regex.match(parent):
                return True
        return False


def _compile(pattern: str) -> re.Pattern[str]:
    out = ["^"]
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                out.append("(.*/)?")  # '**/' matches zero or more directories
                i += 1
            else:
                out.append(".*")
            continue
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out.append(re.escape(ch))
            else:
                body = pattern[i + 1:end]
                if body.startswith("^"):
                    body = "!" + body[1:]
                out.append("[" + ("^" + body[1:] if body.startswith("!") else body)
                           .replace("\\", "\\\\") + "]")
                i = end
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(ch))
        i += 1
    out.append("$")
    return re.compile("".join(out), re.DOTALL)


@dataclass(frozen=True)
class DockerIgnore:
    """The compiled ``.dockerignore`` of a context."""

    patterns: tuple[IgnorePattern, ...] = ()

    @classmethod
    def from_text(cls, text: str) -> DockerIgnore:
        found = (IgnorePattern.parse(line) for line in text.splitlines())
        return cls(tuple(p for p in found if p is not None))

    def reincludes_below(self, directory: str) -> bool:
        """True when a ``!`` pattern may bring back something under the excluded ``directory``,
        so the walk must enter it (Docker's rule: the pattern starts with ``directory/``)."""
        prefix = directory.rstrip("/") + "/"
        return any(p.exclusion and (p.text + "/").startswith(prefix) for p in self.patterns)

    def excluded(self, rel: str) -> bool:
        """True when ``rel`` (a context-relative path) is left out of the context."""
        result = False
        for pattern in self.patterns:
            if pattern.matches(rel):
                result = not pattern.exclusion
        return result


@dataclass(frozen=True)
class BuildContext:
    """A local context directory and its ignore rules."""

    root: Path
    ignore: DockerIgnore = field(default_factory=DockerIgnore)

    @classmethod
    def load(cls, root: Path, dockerfile: Path) -> BuildContext:
        """Read the ignore file that applies to ``dockerfile`` in context ``root``."""
        for candidate in (dockerfile.with_name(dockerfile.name + ".dockerignore"),
                          root / ".dockerignore"):
            if candidate.is_file():
                return cls(root, DockerIgnore.from_text(candidate.read_text(errors="replace")))
        return cls(root)

    @cached_property
    def _real_root(self) -> str:
        return os.path.realpath(self.root)

    def sources(self, pattern: str, where: str) -> list[tuple[str, Path]]:
        """The context paths that a COPY source names, as (relative path, host path) pairs.

        ``where`` is the ``file:line`` for errors. A source that climbs out of the context is
        refused, as BuildKit refuses it. A wildcard that matches nothing gives nothing (Docker
        copies the other sources); a missing path that is not a wildcard is an error. A
        directory excluded by ``.dockerignore`` is still found when a ``!`` pattern brings
        back something below it, as Docker sends that directory with what it re-includes.
        """
        cleaned = posixpath.normpath("/" + pattern).lstrip("/") or "."
        if posixpath.normpath(pattern).startswith("../") or posixpath.normpath(pattern) == "..":
            raise ContextError(f"{where}: COPY source {pattern!r} is outside the build context")
        wildcard = glob.has_magic(cleaned)
        if wildcard:
            matches = sorted(glob.glob(cleaned, root_dir=self.root, include_hidden=True))
        else:
            matches = [cleaned] if os.path.lexists(self.root / cleaned) else []
        found = [(rel, self.root / rel) for rel in matches if rel == "." or self._sent(rel)]
        for _, path in found:
            real = os.path.realpath(path)
            if real != self._real_root and not real.startswith(self._real_root + os.sep):
                raise ContextError(f"{where}: COPY source {pattern!r} is outside the build "
                                   "context")
        if not found and not wildcard:
            raise ContextError(f"{where}: COPY source {pattern!r} matched no files in the "
                               "build context")
        prefix = wildcard_directory(cleaned)
        if not found and prefix and not (self.root / prefix).is_dir():
            raise ContextError(f"{where}: COPY source {pattern!r}: no directory {prefix!r} in "
                               "the build context")
        return found

    def _sent(self, rel: str) -> bool:
        """True when ``rel`` is part of the context Docker would send."""
        if not self.ignore.excluded(rel):
            return True
        return (self.root / rel).is_dir() and self.ignore.reincludes_below(rel)


def wildcard_directory(pattern: str) -> str:
    """The directory a wildcard pattern searches: its components before the first wildcard
    (``src/*/x.go`` -> ``src``; ``*.go`` -> ``""``). Docker fails a wildcard source whose
    directory does not exist, even when wildcards matching nothing are allowed."""
    parts = [p for p in pattern.strip("/").split("/") if p not in ("", ".")]
    fixed: list[str] = []
    for part in parts:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return "/".join(fixed)
