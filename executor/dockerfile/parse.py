"""Read a Dockerfile with BuildKit's own parser into ``Instruction`` values that know their line.

The ``dockerfile`` package is BuildKit's Go parser compiled for Python, so line continuations,
JSON forms, heredocs and flags are split exactly as ``docker build`` splits them. The parser is
lenient (an unknown instruction parses fine), so this module adds the checks BuildKit makes
next: known instructions, argument counts, parser directives.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import dockerfile

from executor.errors import DockerfileError

log = logging.getLogger("kiln")

KNOWN_INSTRUCTIONS = frozenset({
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
    "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
})

# Instructions that must have at least one argument, as BuildKit checks.
#: BuildKit takes a bare ``CMD``/``ENTRYPOINT`` (shell form of "") and ``[]`` (cleared) too.
_NEEDS_ARGUMENTS = KNOWN_INSTRUCTIONS - {"HEALTHCHECK", "CMD", "ENTRYPOINT"}

_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9_-]*)\s*=\s*(.*?)\s*$")


@dataclass(frozen=True)
class Location:
    """Where an instruction starts: printed as ``Dockerfile:7`` at the head of every error."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Heredoc:
    """A ``<<NAME`` body: its name, the file descriptor it feeds and the text."""

    name: str
    content: str
    fd: int = 0


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction as parsed: nothing expanded yet.

    ``args`` holds the arguments as BuildKit split them (quotes kept, except for JSON form);
    ``flags`` the ``--name=value`` flags; ``json`` tells exec form from shell form.
    """

    kind: str
    args: tuple[str, ...]
    flags: tuple[str, ...]
    json: bool
    original: str
    location: Location
    heredocs: tuple[Heredoc, ...] = ()
    sub_kind: str | None = None

    def error(self, message: str) -> DockerfileError:
        return DockerfileError(str(self.location), message)

    def flag_values(self, allowed: tuple[str, ...],
                    repeatable: tuple[str, ...] = ()) -> dict[str, str]:
        """The flags as ``{name: value}``; an unknown flag is an error, as in BuildKit.

        A flag named in ``repeatable`` may be given several times (read them with
        :meth:`flag_list`); any other flag given twice is an error, as in BuildKit.
        """
        values: dict[str, str] = {}
        for name, value in self.flag_list(allowed):
            if name in values and name not in repeatable:
                raise self.error(f"duplicate flag specified: --{name}")
            values[name] = value
        return values

    def flag_list(self, allowed: tuple[str, ...]) -> list[tuple[str, str]]:
        """Every flag as ``(name, value)`` in order, repeated ones included."""
        out: list[tuple[str, str]] = []
        for flag in self.flags:
            name, eq, value = flag[2:].partition("=")
            if name not in allowed:
                raise self.error(f"unknown flag: --{name} for {self.kind}")
            if not eq and name not in _BOOLEAN_FLAGS:
                raise self.error(f"flag --{name} for {self.kind} needs a value")
            out.append((name, value if eq else "true"))
        return out


# Flags that may be given bare (``--link`` means ``--link=true``).
_BOOLEAN_FLAGS = frozenset({"link", "parents", "keep-git-dir", "unpack"})


@dataclass(frozen=True)
class Dockerfile:
    """A parsed Dockerfile: instructions, the escape character and where it came from."""

    path: str
    instructions: tuple[Instruction, ...]
    escape: str = "\\"


def parse_dockerfile(path: Path, display_name: str | None = None) -> Dockerfile:
    """Parse the Dockerfile at ``path``; errors name ``display_name:line``."""
    name = display_name or path.name
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DockerfileError(str(path), "no such file: the Dockerfile was not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DockerfileError(str(path), f"cannot read the Dockerfile: {exc}") from None
    return parse_text(text, name)


def parse_text(text: str, name: str = "Dockerfile") -> Dockerfile:
    """Parse Dockerfile source ``text``; ``name`` is used in error locations."""
    escape = _read_directives(text, name)
    try:
        commands = dockerfile.parse_string(text)
    except dockerfile.GoParseError as exc:
        line = _first_failing_line(text)
        raise DockerfileError(f"{name}:{line}", f"syntax error: {exc}") from None
    instructions = tuple(_to_instruction(cmd, name) for cmd in commands)
    if not instructions:
        raise DockerfileError(f"{name}:1", "the Dockerfile has no instructions")
    return Dockerfile(path=name, instructions=instructions, escape=escape)


def _read_directives(text: str, name: str) -> str:
    """The ``escape`` directive's character; warns that ``syntax`` is ignored.

    Directives are only recognised in comment lines at the very top of the file, before any
    instruction, blank line or ordinary comment, as the Dockerfile reference specifies.
    """
    escape = "\\"
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        match = _DIRECTIVE.match(line)
        if not match:
            break
        key, value = match.group(1).lower(), match.group(2)
        if key in seen:
            raise DockerfileError(f"{name}:{number}", f"only one {key} parser directive can "
                                  "be used")
        seen.add(key)
        if key == "escape":
            if value not in ("\\", "`"):
                raise DockerfileError(f"{name}:{number}", f"invalid escape token '{value}' "
                                      "does not match ` or \\")
            escape = value
        elif key == "syntax":
            log.warning("%s:%d: ignoring the syntax directive %r: kiln builds with its own "
                        "Dockerfile frontend", name, number, value)
    return escape


def _first_failing_line(text: str) -> int:
    """The line where the parser first fails: the shortest prefix of lines that fails."""
    lines = text.splitlines(keepends=True)
    for count in range(1, len(lines) + 1):
        try:
            dockerfile.parse_string("".join(lines[:count]))
        except dockerfile.GoParseError:
            return count
    return len(lines) or 1


def _to_instruction(cmd: dockerfile.Command, name: str) -> Instruction:
    kind = cmd.cmd.upper()
    location = Location(name, cmd.start_line)
    if kind not in KNOWN_INSTRUCTIONS:
        raise DockerfileError(str(location), f"unknown instruction: {cmd.cmd}")
    args = tuple(cmd.value)
    if kind == "ONBUILD" and (cmd.sub_cmd or "").upper() == "ONBUILD":
        raise DockerfileError(str(location), "Chaining ONBUILD via `ONBUILD ONBUILD` isn't "
                              "allowed")
    if kind in _NEEDS_ARGUMENTS and (not args or args == ("",)):
        raise DockerfileError(str(location), f"{kind} requires at least one argument")
    return Instruction(
        kind=kind,
        args=args,
        flags=tuple(cmd.flags),
        json=bool(cmd.json),
        original=cmd.original,
        location=location,
        heredocs=tuple(Heredoc(h.name, h.content, h.file_descriptor) for h in cmd.heredocs),
        sub_kind=cmd.sub_cmd.upper() if cmd.sub_cmd else None,
    )
