"""The build context: the directory COPY and ADD read from, with ``.dockerignore`` applied.

Patterns follow Docker's rules (moby/patternmatcher): paths are relative to the context root
(a leading ``/`` is dropped), ``*`` and ``?`` do not cross ``/``, ``**`` matches any number of
directories, ``!`` re-includes, the last matching pattern wins, and a pattern that matches a
directory excludes everything under it (matched by :mod:`executor.patterns`, in linear time).
``<Dockerfile>.dockerignore`` beside the Dockerfile takes precedence over the context's
``.dockerignore``.
"""

from __future__ import annotations

import glob
import os
import posixpath
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from executor.errors import ContextError
from executor.patterns import PathPattern, PatternError, compile_path_pattern


@dataclass(frozen=True)
class IgnorePattern:
    """One ``.dockerignore`` line, compiled."""

    text: str
    exclusion: bool
    pattern: PathPattern

    @classmethod
    def parse(cls, line: str) -> IgnorePattern | None:
        """The pattern on ``line``, None for a blank line or a comment; PatternError for a
        pattern Docker refuses too."""
        if line.startswith("#"):
            return None  # only a '#' in the first column starts a comment, as in Docker
        text = line.strip()
        if not text:
            return None
        # Docker cleans twice: the ignore-file reader (after taking off a '!') and the matcher
        # (with the '!' on), so "/!a" ends up an exclusion and "!/" an error; kept exactly.
        inverted = text.startswith("!")
        if inverted:
            text = text[1:].strip()
        if text:
            text = _clean(text)
            if len(text) > 1 and text.startswith("/"):
                text = text[1:]
        text = _clean(("!" if inverted else "") + text)
        exclusion = text.startswith("!")
        if exclusion:
            if text == "!":
                raise PatternError('illegal exclusion pattern: "!"')
            text = text[1:]
        return cls(text, exclusion, compile_path_pattern(text))

    def matches(self, rel: str) -> bool:
        """True if the pattern matches ``rel`` or one of its parent directories."""
        return self.pattern.match_or_parent(rel)


# Each line is a pattern checked against every path of the context: a file of many megabytes is
# a mistake or an attack, refused before it is read whole (as the Dockerfile is).
MAX_IGNORE_FILE_BYTES = 10 * 1024 * 1024


def _clean(path: str) -> str:
    """Go's ``filepath.Clean``: ``posixpath.normpath`` but with one leading slash at most."""
    cleaned = posixpath.normpath(path)
    return "/" + cleaned.lstrip("/") if cleaned.startswith("//") else cleaned


@dataclass(frozen=True)
class DockerIgnore:
    """The compiled ``.dockerignore`` of a context."""

    patterns: tuple[IgnorePattern, ...] = ()

    @classmethod
    def from_text(cls, text: str, source: str = ".dockerignore") -> DockerIgnore:
        """Compile each line of ``text``; a bad pattern is a ContextError naming
        ``source:line``."""
        found: list[IgnorePattern] = []
        for number, line in enumerate(text.removeprefix("\ufeff").splitlines(), start=1):
            try:
                pattern = IgnorePattern.parse(line)
            except PatternError as exc:
                raise ContextError(f"{source}:{number}: {exc}") from None
            if pattern is not None:
                found.append(pattern)
        return cls(tuple(found))

    def reincludes_below(self, directory: str) -> bool:
        """True when a ``!`` pattern may bring back something under the excluded ``directory``,
        so the walk must enter it: the pattern's fixed part (before its first wildcard) lies
        below ``directory`` or above it (``!dir/keep``, ``!**/*.go``), as BuildKit enters it."""
        prefix = directory.strip("/") + "/"
        for pattern in self.patterns:
            if not pattern.exclusion:
                continue
            fixed = wildcard_directory(pattern.text) if glob.has_magic(pattern.text) \
                else pattern.text
            fixed = fixed.strip("/") + "/" if fixed.strip("/") else ""
            if fixed.startswith(prefix) or prefix.startswith(fixed):
                return True
        return False

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
                try:
                    with candidate.open("rb") as stream:
                        data = stream.read(MAX_IGNORE_FILE_BYTES + 1)
                except OSError as exc:
                    raise ContextError(f"{candidate}: cannot read it: "
                                       f"{exc.strerror or exc}") from None
                if len(data) > MAX_IGNORE_FILE_BYTES:
                    raise ContextError(f"{candidate}: larger than kiln's limit of "
                                       f"{MAX_IGNORE_FILE_BYTES >> 20} MiB for an ignore file")
                text = data.decode(errors="replace")
                return cls(root, DockerIgnore.from_text(text, candidate.name))
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
