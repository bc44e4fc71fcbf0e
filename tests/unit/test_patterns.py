"""The linear-time matcher behind ${V#p}, ${V/p/r}, .dockerignore and COPY --exclude.

The tables were checked against BuildKit v0.32.2's shell lexer and moby/patternmatcher; the
hypothesis tests compare the matcher with the backtracking regular expressions Docker's rules
translate to (what kiln used before), on inputs small enough for backtracking to finish.
"""

from __future__ import annotations

import random
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from executor import patterns
from executor.context import DockerIgnore
from executor.dockerfile.expand import ExpansionError, expand_word
from executor.dockerfile.parse import parse_text
from executor.errors import ContextError, DockerfileError
from executor.instructions.copy import _exclude_patterns
from executor.patterns import compile_path_pattern, replace, trim_prefix, trim_suffix


@pytest.mark.parametrize(
    ("word", "value", "expected"),
    [
        ("${V#*a}", "bab", "b"),
        ("${V##*a}", "banana", ""),
        ("${V%a*}", "banana", "banan"),
        ("${V%%a*}", "banana", "b"),
        ("${V#*}", "a\nb", "a\nb"),          # '*' does not cross a newline (Go's '.')
        ("${V##*}", "a\nb", "\nb"),
        ("${V//?/x}", "a\nb", "x\nx"),
        ("${V//*/r}", "abc", "r"),           # no second, empty match at the end (Go, not re)
        ("${V//x*/-}", "abxd", "ab-"),
        ("${V//b*/x}", "abbab", "ax"),
        ("${V/a/}", "banana", "bnana"),
        ("${V//\\*/s}", "a*b*", "asbs"),
        ("${V#\\?}", "?x", "x"),
        ("${V//b/\\/}", "abc", "a\\/c"),  # the replacement keeps its escape, as BuildKit
    ],
)
def test_shell_patterns_match_buildkit(word: str, value: str, expected: str) -> None:
    assert expand_word(word, {"V": value}) == expected


def test_an_invalid_escape_in_a_shell_pattern_is_buildkits_error() -> None:
    with pytest.raises(ExpansionError, match=r"invalid pattern \(\\x\) in substitution: "
                                             r"invalid escape '\\x'"):
        expand_word("${V#\\x}", {"V": "x"})


@pytest.mark.parametrize(
    "word",
    ["${V#********b}", "${V##" + "*" * 40 + "b}", "${V%" + "*a" * 30 + "b}",
     "${V/" + "*a" * 30 + "b/x}", "${V//" + "*a" * 30 + "b/x}"],
)
def test_shell_patterns_that_backtracking_cannot_finish_take_milliseconds(word: str) -> None:
    started = time.monotonic()
    assert expand_word(word, {"V": "a" * 40}) == "a" * 40
    assert time.monotonic() - started < 0.5


@pytest.mark.parametrize(
    ("pattern", "path"),
    [("*a*a*a*a*a*a*b", "a" * 200), ("**/" * 40 + "x", "/".join(["a"] * 200) + "/y"),
     ("a/**/**/**/**/b*c*d*e*f", "a/" + "/".join(["bcde"] * 200) + "/bcdefg")],
)
def test_path_patterns_that_backtracking_cannot_finish_take_milliseconds(
        pattern: str, path: str) -> None:
    started = time.monotonic()
    assert DockerIgnore.from_text(pattern).excluded(path) is False
    assert time.monotonic() - started < 0.5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a\n[z-a]\n", ".dockerignore:2: syntax error in pattern '[z-a]': range z-a is "
                       "reversed"),
        ("[a", ".dockerignore:1: syntax error in pattern '[a'"),
        ("[]a]", ".dockerignore:1: syntax error in pattern '[]a]'"),
        ("!", '.dockerignore:1: illegal exclusion pattern: "!"'),
        ("x\\", ".dockerignore:1: syntax error in pattern 'x\\\\': it ends in a backslash"),
    ],
)
def test_a_bad_dockerignore_pattern_is_one_line_naming_file_line_and_pattern(
        text: str, message: str) -> None:
    with pytest.raises(ContextError) as caught:
        DockerIgnore.from_text(text)
    assert str(caught.value) == message


def test_a_bad_copy_exclude_pattern_names_the_dockerfile_line() -> None:
    inst = parse_text("FROM scratch\nCOPY --exclude=[z-a] . /d/\n").instructions[1]
    with pytest.raises(DockerfileError) as caught:
        _exclude_patterns(inst, ["[z-a]"])
    assert str(caught.value) == ("Dockerfile:2: invalid --exclude pattern '[z-a]': syntax "
                                 "error in pattern '[z-a]': range z-a is reversed")


# --- the matcher against the regular expressions Docker's rules translate to ---------------


def _shell_regex(pattern: str, greedy: bool, anchored: bool) -> re.Pattern[str]:
    """BuildKit's convertShellPatternToRegex, for Python's re (no DOTALL: Go's '.')."""
    out = ["^"] if anchored else []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        i += 1
        if ch == "*":
            out.append(".*" if greedy else ".*?")
        elif ch == "?":
            out.append(".")
        elif ch == "\\":
            out.append(re.escape(pattern[i]))
            i += 1
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out))


def _go_replace_all(regex: re.Pattern[str], value: str, replacement: str) -> str:
    """Go's ReplaceAllString loop: no empty match right after a match, always advance."""
    out: list[str] = []
    last_end = pos = 0
    while pos <= len(value):
        found = regex.search(value, pos)
        if found is None:
            break
        out.append(value[last_end:found.start()])
        if found.end() > last_end or found.start() == 0:
            out.append(replacement)
        last_end = found.end()
        pos = pos + 1 if pos + 1 > found.end() else found.end()
    out.append(value[last_end:])
    return "".join(out)


_shell_pattern = st.lists(st.sampled_from(["a", "b", "*", "?", "\\*", "\\?", "."]),
                          max_size=6).map("".join)
_value = st.text(alphabet="ab.*?\n", max_size=8)


def _reversed_tokens(pattern: str) -> str:
    tokens = re.findall(r"\\.|.", pattern, re.DOTALL)
    return "".join(reversed(tokens))


@settings(max_examples=300, deadline=None)
@given(_shell_pattern, _value, st.booleans())
def test_trimming_equals_the_regex_translation(pattern: str, value: str, longest: bool) -> None:
    match = _shell_regex(pattern, longest, anchored=True).search(value)
    assert trim_prefix(pattern, value, longest=longest) == (
        value[match.end():] if match else value)
    reversed_match = _shell_regex(_reversed_tokens(pattern), longest,
                                  anchored=True).search(value[::-1])
    expected = value[::-1][reversed_match.end():][::-1] if reversed_match else value
    assert trim_suffix(pattern, value, longest=longest) == expected


@settings(max_examples=300, deadline=None)
@given(_shell_pattern, _value, st.booleans())
def test_replacing_equals_the_regex_translation(pattern: str, value: str, every: bool) -> None:
    regex = _shell_regex(pattern, greedy=True, anchored=False)
    if every:
        expected = _go_replace_all(regex, value, "X")
    else:
        found = regex.search(value)
        expected = value[:found.start()] + "X" + value[found.end():] if found else value
    assert replace(pattern, value, "X", every=every) == expected


def _path_regex(pattern: str) -> re.Pattern[str]:
    """moby/patternmatcher's regular expression for ``pattern`` (simple classes only)."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
            out.append(".*" if i >= len(pattern) else "(.*/)?")
            continue
        ch = pattern[i]
        i += 1
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[":
            end = pattern.index("]", i)
            out.append("[" + pattern[i:end] + "]")
            i = end + 1
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out))


_path_pattern = st.lists(st.sampled_from(["a", "b", "*", "?", "**", "/", "**/", "[ab]",
                                          "[^a]", "[!a]", "."]),
                         min_size=1, max_size=6).map("".join)
_path = st.lists(st.text(alphabet="ab!.", min_size=1, max_size=3)
                 .filter(lambda c: c not in (".", "..")), min_size=1, max_size=3).map("/".join)


@settings(max_examples=400, deadline=None)
@given(_path_pattern, _path)
def test_path_patterns_equal_the_regex_translation(pattern: str, path: str) -> None:
    compiled = compile_path_pattern(pattern)
    if compiled.kind == "automaton":
        assert compiled.match(path) == bool(_path_regex(pattern).fullmatch(path))


def test_a_pattern_with_more_dfa_states_than_the_cache_holds_still_matches_correctly() -> None:
    # "*a" then 13 "?" needs 2**13 DFA states on a text of a and b: past the cache's bound.
    rng = random.Random(7)
    automaton = patterns.compile_shell_pattern("*a" + "?" * 13)
    regex = re.compile("(?s:.*a.{13})")
    for _ in range(60):
        text = "".join(rng.choice("ab") for _ in range(rng.randint(10, 400)))
        assert automaton.fullmatch(text) == bool(regex.fullmatch(text))
    assert len(automaton._sets) <= patterns._MAX_DFA_STATES + 2
