"""Read a Dockerfile with BuildKit's own parser into ``Instruction`` values that know their line.

The ``dockerfile`` package is BuildKit's Go parser compiled for Python, so line continuations,
JSON forms, heredocs and flags are split exactly as ``docker build`` splits them. The parser is
lenient (an unknown instruction parses fine), so this module adds the checks BuildKit makes
next: known instructions, argument counts, parser directives.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dockerfile

from executor.dockerfile.expand import MAX_SUBSTITUTION_DEPTH
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


def strip_heredoc_tabs(body: str) -> str:
    """A ``<<-NAME`` body: the leading tabs of every line removed, as a shell does (and
    BuildKit, for RUN and COPY alike)."""
    return "".join(line.lstrip("\t") for line in body.splitlines(keepends=True))


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


# BuildKit sets no limit, but a Dockerfile is read whole into memory, then into instructions;
# one of several hundred megabytes is a mistake or an attack, refused before it is read.
MAX_DOCKERFILE_BYTES = 10 * 1024 * 1024


def parse_dockerfile(path: Path, display_name: str | None = None) -> Dockerfile:
    """Parse the Dockerfile at ``path``; errors name ``display_name:line``."""
    name = display_name or path.name
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_DOCKERFILE_BYTES + 1)
    except FileNotFoundError:
        raise DockerfileError(str(path), "no such file: the Dockerfile was not found") from None
    except OSError as exc:
        raise DockerfileError(str(path), f"cannot read the Dockerfile: {exc.strerror or exc}") \
            from None
    if len(data) > MAX_DOCKERFILE_BYTES:
        raise DockerfileError(str(path), "the Dockerfile is larger than kiln's limit of "
                              f"{MAX_DOCKERFILE_BYTES // (1024 * 1024)} MiB")
    return parse_text(decode_dockerfile(data, name), name)


def decode_dockerfile(data: bytes, name: str) -> str:
    """The Dockerfile as text. BuildKit reads bytes and builds a Dockerfile that is not UTF-8
    (a Latin-1 comment is common); what it writes in the image config has U+FFFD for each bad
    byte. kiln reads such bytes as U+FFFD too, and says where the first one is."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        log.warning("%s:%d: byte 0x%02x is not UTF-8; it is read as U+FFFD", name, line,
                    data[exc.start])
        return data.decode("utf-8", errors="replace")


def parse_text(text: str, name: str = "Dockerfile") -> Dockerfile:
    """Parse Dockerfile source ``text``; ``name`` is used in error locations."""
    escape = _read_directives(text, name)
    _check_substitutions(text, escape, name)
    try:
        commands = dockerfile.parse_string(text)
    except dockerfile.GoParseError as exc:
        line = _first_failing_line(text, escape)
        raise DockerfileError(f"{name}:{line}", f"syntax error: {exc}") from None
    instructions = tuple(_to_instruction(cmd, name) for cmd in commands)
    if any(i.kind == "ONBUILD" and "<<" in i.original for i in instructions):
        instructions = tuple(_with_onbuild_heredocs(i, cmd, text, escape)
                             for i, cmd in zip(instructions, commands, strict=True))
    if not instructions:
        raise DockerfileError(f"{name}:1", "the Dockerfile has no instructions")
    return Dockerfile(path=name, instructions=instructions, escape=escape)


# BuildKit's parser lexes RUN, COPY and ADD lines in time cubic in the nesting of ${...}
# (2,000 levels took 44 s, during which no signal is handled) and worse than linear in their
# number (40,000 in one word: 12 s); no real Dockerfile nests more than a few levels or writes
# thousands of substitutions in one instruction.
MAX_SUBSTITUTIONS = 4096


def _check_substitutions(text: str, escape: str, name: str) -> None:
    """Refuse ``${`` nested deeper than MAX_SUBSTITUTION_DEPTH, or more than
    MAX_SUBSTITUTIONS of them, within one instruction (its continued lines)."""
    if "${" not in text:
        return
    depth = count = 0
    for number, line in enumerate(text.splitlines(), start=1):
        for match in _BRACES.finditer(line):
            if match.group() == "}":
                depth = max(depth - 1, 0)
                continue
            depth += 1
            count += 1
            if depth > MAX_SUBSTITUTION_DEPTH:
                raise DockerfileError(f"{name}:{number}", "variable substitutions (${...}) are "
                                      f"nested more than {MAX_SUBSTITUTION_DEPTH} deep")
            if count > MAX_SUBSTITUTIONS:
                raise DockerfileError(f"{name}:{number}", f"more than {MAX_SUBSTITUTIONS} "
                                      "variable substitutions (${...}) in one instruction")
        if not line.rstrip(" \t").endswith(escape):
            depth = count = 0  # the instruction ends with its line


_BRACES = re.compile(r"\$\{|\}")


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


def _first_failing_line(text: str, escape: str) -> int:
    """The line of the first instruction that BuildKit's parser refuses.

    The parser's error carries no line, so the text is cut into instructions the way the parser
    reads them (comments, continuation lines, heredoc bodies) and each instruction is parsed on
    its own: one more pass over the text, where parsing every prefix of lines took minutes and
    gigabytes on a long file.
    """
    lines = text.splitlines(keepends=True)
    directive = "# escape=`\n" if escape == "`" else ""
    last = 1
    for start, end in _instruction_spans(lines, escape):
        last = start + 1
        try:
            dockerfile.parse_string(directive + "".join(lines[start:end]))
        except dockerfile.GoParseError:
            return start + 1
    return last


_HEREDOC_WORD = re.compile(r"^\d*<<(-?)\s*([^<]+)$")
_HEREDOC_INSTRUCTIONS = frozenset({"RUN", "COPY", "ADD"})


def _instruction_spans(lines: list[str], escape: str) -> Iterator[tuple[int, int]]:
    """``(first, after_last)`` line indexes of each instruction, as BuildKit's parser groups
    lines: comments and blank lines between instructions are skipped, a line ending in the
    escape character continues (comment and blank lines inside are skipped), and RUN, COPY
    and ADD lines with ``<<NAME`` words take the following lines up to each terminator."""
    continuation = re.compile(rf"(?:[^{re.escape(escape)}]|^){re.escape(escape)}[ \t]*$")
    index = 0
    while index < len(lines):
        start = index
        first = lines[index].rstrip("\r\n").lstrip()
        index += 1
        if not first or first.startswith("#"):
            continue
        joined = [first]
        continued = bool(continuation.search(first))
        while continued and index < len(lines):
            line = lines[index].rstrip("\r\n")
            index += 1
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            joined.append(line)
            continued = bool(continuation.search(line))
        for chomp, name in _heredocs(" ".join(joined)):
            while index < len(lines):
                line = lines[index].rstrip("\r\n")
                index += 1
                if (line.lstrip("\t") if chomp else line) == name:
                    break
        yield start, index


def _heredocs(line: str) -> list[tuple[bool, str]]:
    """``(chomp, name)`` of each heredoc a RUN/COPY/ADD line opens (quotes taken off)."""
    words = line.split()
    if not words:
        return []
    kind = words[0].upper()
    if kind == "ONBUILD" and len(words) > 1:
        words = words[1:]
        kind = words[0].upper()
    if kind not in _HEREDOC_INSTRUCTIONS or "<<" not in line or words[1:2] == ["["]:
        return []
    found = []
    for word in words[1:]:
        match = _HEREDOC_WORD.match(word)
        if match:
            found.append((match.group(1) == "-", match.group(2).replace('"', "").replace(
                "'", "")))
    return found


_ONBUILD_KEYWORD = re.compile(r"^\s*ONBUILD\s*", re.IGNORECASE)


def _with_onbuild_heredocs(inst: Instruction, cmd: dockerfile.Command, text: str,
                           escape: str) -> Instruction:
    """An ``ONBUILD RUN <<EOF`` with the heredocs its trigger carries.

    The parser binding drops the heredocs of an ONBUILD's inner instruction, so the lines the
    ONBUILD spans are parsed again without the keyword, as the instruction the trigger will be.
    """
    if inst.kind != "ONBUILD" or cmd.end_line <= cmd.start_line or inst.heredocs:
        return inst
    lines = text.splitlines(keepends=True)[cmd.start_line - 1:cmd.end_line]
    lines[0] = _ONBUILD_KEYWORD.sub("", lines[0], count=1)
    prefix = "# escape=`\n" if escape == "`" else ""
    try:
        inner = dockerfile.parse_string(prefix + "".join(lines))
    except dockerfile.GoParseError:
        return inst  # the whole file parsed, so this is not expected; keep the first line
    if len(inner) != 1:
        return inst
    heredocs = tuple(Heredoc(h.name, h.content, h.file_descriptor) for h in inner[0].heredocs)
    return Instruction(inst.kind, inst.args, inst.flags, inst.json, inst.original,
                       inst.location, heredocs, inst.sub_kind)


def onbuild_trigger(inst: Instruction) -> str:
    """What ``ONBUILD`` stores in the config, as BuildKit stores it: the instruction without
    the keyword, then each heredoc's body and terminator (``RUN <<EOF\\necho hi\\nEOF``)."""
    trigger = _ONBUILD_KEYWORD.sub("", inst.original, count=1)
    return trigger + "".join(f"\n{h.content}{h.name}" for h in inst.heredocs)


def _to_instruction(cmd: dockerfile.Command, name: str) -> Instruction:
    location = Location(name, cmd.start_line)
    if not cmd.cmd:
        # A last line that is only the escape character continues into nothing; BuildKit
        # reports "unknown instruction: " (found by tests/fuzz: cmd was None).
        raise DockerfileError(str(location), "unknown instruction: the line continues (ends in "
                              "the escape character) but nothing follows")
    kind = cmd.cmd.upper()
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
