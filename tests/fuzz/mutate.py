"""A seeded mutator over the conformance corpus, and the input side of a build run on each mutant.

Run as ``python -m tests.fuzz.mutate SEED COUNT`` (a separate process, so the test can read its
peak memory): it writes one JSON line per input, ``{"index", "kind", "seconds", "outcome",
"detail"}``, where ``outcome`` is ``ok``, ``error`` (a one-line KilnError, what the CLI prints)
or ``bug`` (any other exception, or an error message of several lines: a traceback in the CLI),
then a last line ``{"max_rss_kb": N}`` (each record has the peak so far too).

The mutations are the ones that found bugs by hand (issue 18): deep ``${...}`` nesting,
unbalanced quotes and braces, heredoc markers, escapes, long repetitions, bytes that are not
UTF-8, patterns with classes and ``**``, lines spliced from other cases.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import resource
import sys
import time
import traceback
from pathlib import Path

from executor.context import BuildContext, DockerIgnore
from executor.dockerfile.expand import ExpansionError, expand_word, expand_words
from executor.dockerfile.parse import decode_dockerfile, parse_text
from executor.dockerfile.stages import plan_build
from executor.errors import KilnError
from executor.image.model import Platform

CASES = Path(os.environ.get("KILN_FUZZ_CASES")
             or Path(__file__).resolve().parent.parent / "conformance" / "cases")
MAX_INPUT = 100 * 1024

_TOKENS = [
    b"${", b"}", b"${A:+", b"${A:-", b"${A#", b"${A%%", b"${A//", b"${A/*a*a*a*b/", b"$",
    b"\\", b"`", b"\"", b"'", b"<<EOF", b"<<-EOF", b"EOF", b"[", b"]", b"[z-a]", b"*", b"?",
    b"**/", b"#", b"\n", b"\r\n", b" ", b"\t", b"--from=", b"--mount=type=cache,target=/x",
    b"--exclude=", b"--chmod=", b"--chown=", b"=", b"ONBUILD ", b"FROM ", b" AS x", b"ARG A=",
    b"ENV A=", b"COPY ", b"RUN ", b"# escape=`\n", b"\x00", b"\xe9", b"\xff\xfe",
    "\u00e9\U0001f600".encode(), b"..", b"/../", b"--platform=$BUILDPLATFORM",
    b"\\\n", b"<<", b"\r", b"ONBUILD ONBUILD ", b"--mount=from=$A,target=/m", b"[\"", b"\"]",
]
_IGNORE_TOKENS = ["*", "**", "**/", "?", "[ab]", "[^a]", "[!a]", "[z-a]", "[", "]", "\\", "!",
                  "/", ".", "..", "a", "sub", "#", " ", "*a*a*a*a*a*a*b", "\\*"]


def corpus() -> list[tuple[Path, bytes]]:
    """Every conformance case directory with its Dockerfile's bytes."""
    return [(path.parent, path.read_bytes()) for path in sorted(CASES.glob("*/Dockerfile"))]


def mutate(rng: random.Random, data: bytes, others: list[bytes], edits: int = 4,
           repeat: int = 2000) -> bytes:
    """One to ``edits`` random edits of ``data``; the result stays under MAX_INPUT.

    ``repeat`` bounds how often a line is repeated: a build of 2,000 ``RUN true`` steps is
    2,000 steps of real work, not a hostile input."""
    for _ in range(rng.randint(1, edits)):
        choice = rng.randrange(7)
        pos = rng.randint(0, len(data))
        if choice == 0:
            data = data[:pos] + rng.choice(_TOKENS) + data[pos:]
        elif choice == 1 and data:
            data = data[:pos] + data[pos + rng.randint(1, 20):]
        elif choice == 2:
            token = rng.choice(_TOKENS[:12])
            depth = rng.choice([10, 65, 400, 2000])
            data = data[:pos] + token * depth + data[pos:]
        elif choice == 3 and data:
            index = rng.randrange(len(data))
            data = data[:index] + bytes([rng.randrange(256)]) + data[index + 1:]
        elif choice == 4:
            lines = data.split(b"\n")
            if len(lines) > 1:
                i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
                lines[i], lines[j] = lines[j], lines[i]
            data = b"\n".join(lines)
        elif choice == 5:
            donor = rng.choice(others).split(b"\n")
            line = rng.choice(donor)
            data = data[:pos] + b"\n" + line + b"\n" + data[pos:]
        else:
            line = rng.choice(data.split(b"\n") or [b""])
            # Bounded by MAX_INPUT here, so the mutator itself never holds a huge string.
            times = min(rng.choice([2, 50, 2000]), repeat, MAX_INPUT // (len(line) + 1) + 1)
            data = data + (b"\n" + line) * times
    return data[:MAX_INPUT]


def mutate_ignore(rng: random.Random) -> str:
    """A random .dockerignore of a few lines."""
    lines = []
    for _ in range(rng.randint(1, 5)):
        lines.append("".join(rng.choice(_IGNORE_TOKENS) for _ in range(rng.randint(1, 6))))
    return "\n".join(lines)


def input_side(case: Path, data: bytes, ignore_text: str | None) -> None:
    """What a build does with its inputs before running anything: decode and parse the
    Dockerfile, resolve stages, expand the words of each instruction, read the ignore file,
    match COPY sources in the context."""
    text = decode_dockerfile(data, "Dockerfile")
    plan = plan_build(parse_text(text), {"BASE": "busybox"}, None, Platform())
    ignore = DockerIgnore.from_text(ignore_text) if ignore_text is not None else DockerIgnore()
    context = BuildContext(case, ignore)
    env = {"A": "banana", "BASE": "busybox", "EMPTY": ""}
    for stage in plan.stages:
        for inst in stage.instructions:
            if inst.kind in ("RUN", "CMD", "ENTRYPOINT", "SHELL", "HEALTHCHECK", "ONBUILD"):
                continue
            try:
                words = [expand_word(arg, env) for arg in inst.args]
                if inst.kind in ("EXPOSE", "VOLUME"):
                    expand_words(" ".join(inst.args), env)
            except ExpansionError as exc:
                raise inst.error(str(exc)) from None
            if inst.kind in ("COPY", "ADD") and len(words) > 1:
                for source in words[:-1]:
                    if "://" in source or source.startswith("<<"):
                        continue
                    # A source that matches nothing is an ordinary one-line error.
                    with contextlib.suppress(KilnError):
                        context.sources(source, str(inst.location))
    for rel in ("a", "sub/a", "dir/sub/file.txt", "x/y/z"):
        ignore.excluded(rel)


def run_one(case: Path, data: bytes, ignore_text: str | None) -> tuple[str, str]:
    try:
        input_side(case, data, ignore_text)
    except KilnError as exc:
        message = str(exc)
        if "\n" in message or not message.strip():
            return "bug", f"error message is not one line: {message[:300]!r}"
        return "error", message[:300]
    except Exception:  # anything else would be a traceback from the CLI
        return "bug", traceback.format_exc()[-2000:]
    return "ok", ""


def main(seed: int, count: int) -> None:
    logging.disable(logging.WARNING)  # the warnings of bad bytes are expected, by hundreds
    rng = random.Random(seed)
    cases = corpus()
    donors = [data for _, data in cases]
    for index in range(count):
        case, original = rng.choice(cases)
        data = mutate(rng, original, donors)
        ignore_text = mutate_ignore(rng) if rng.random() < 0.3 else None
        started = time.monotonic()
        outcome, detail = run_one(case, data, ignore_text)
        record = {"index": index, "case": case.name, "seconds": time.monotonic() - started,
                  "outcome": outcome, "detail": detail,
                  "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}
        if outcome == "bug":
            record["input"] = data.decode("latin-1")
            record["ignore"] = ignore_text
        print(json.dumps(record), flush=True)
    print(json.dumps({"max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}),
          flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
