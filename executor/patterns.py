"""Docker's two pattern languages, matched in time linear in the text, never by backtracking.

A build matches patterns in two places: the shell lexer's ``${V#p}``, ``${V%p}`` and
``${V/p/r}`` (BuildKit's ``convertShellPatternToRegex``: ``*``, ``?`` and escapes) and
``.dockerignore`` / ``COPY --exclude`` (moby/patternmatcher: ``*``, ``?``, ``**``, ``[...]``).
Docker turns both into Go regular expressions, which run in linear time; Python's ``re``
backtracks, so ``${V#********b}`` on a 40-character value or ``*a*a*a*a*a*a*b`` in a
``.dockerignore`` ran for minutes. Here a pattern compiles to a small NFA (one node per pattern
token) that is simulated over the text, with the sets of nodes reached cached as DFA states, so a
match costs O(len(text) * len(pattern)) at worst and a dictionary lookup per character once warm.

Semantics are the regular expressions Docker builds, reproduced token by token: in shell patterns
``*`` and ``?`` do not match a newline (Go's ``.``); in path patterns ``*`` and ``?`` do not match
``/``, ``**/`` is ``(.*/)?``, a negated class ``[^a]`` matches ``/`` too and ``[!a]`` is a class
holding ``!`` (RE2's syntax, not ``filepath.Match``'s).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

Test = Callable[[str], bool]

_CHAR, _STAR, _SKIP, _AT_START = range(4)
_MAX_DFA_STATES = 4096  # the cache is dropped past this; matching stays linear without it


class PatternError(ValueError):
    """A pattern Docker refuses too (``[z-a]``, a trailing backslash, ``\\x`` in ``${V#p}``)."""


@dataclass(frozen=True)
class _Node:
    """One NFA node: match one character (``_CHAR``), loop over characters (``_STAR``), an
    optional group ending at ``to`` (``_SKIP``), or the ``^`` assertion (``_AT_START``)."""

    op: int
    test: Test | None = None
    to: int = 0


def _is(ch: str) -> Test:
    return ch.__eq__


def _not_newline(c: str) -> bool:
    return c != "\n"


def _not_slash(c: str) -> bool:
    return c != "/"


class Automaton:
    """A compiled pattern: its NFA and the DFA states built from it as texts are matched."""

    def __init__(self, nodes: tuple[_Node, ...]) -> None:
        self._nodes = nodes
        self._accept = len(nodes)
        self._reset()

    def _reset(self) -> None:
        self._ids: dict[frozenset[int], int] = {}
        self._sets: list[frozenset[int]] = []
        self._moves: list[dict[str, int]] = []
        self._accepting: list[bool] = []
        self.start = self._intern(self._closure((0,), at_start=True))
        self.dead = self._intern(frozenset())

    def _closure(self, states: tuple[int, ...] | list[int], at_start: bool) -> frozenset[int]:
        seen: set[int] = set()
        stack = list(states)
        while stack:
            state = stack.pop()
            if state in seen:
                continue
            seen.add(state)
            if state == self._accept:
                continue
            node = self._nodes[state]
            if node.op == _STAR:
                stack.append(state + 1)
            elif node.op == _SKIP:
                stack.extend((state + 1, node.to))
            elif node.op == _AT_START and at_start:
                stack.append(state + 1)
        return frozenset(seen)

    def _intern(self, states: frozenset[int]) -> int:
        found = self._ids.get(states)
        if found is None:
            found = len(self._sets)
            self._ids[states] = found
            self._sets.append(states)
            self._moves.append({})
            self._accepting.append(self._accept in states)
        return found

    def _step(self, states: frozenset[int], ch: str) -> frozenset[int]:
        following: list[int] = []
        for state in states:
            if state == self._accept:
                continue
            node = self._nodes[state]
            if node.op == _CHAR and node.test is not None and node.test(ch):
                following.append(state + 1)
            elif node.op == _STAR and node.test is not None and node.test(ch):
                following.append(state)
        return self._closure(following, at_start=False)

    def move(self, state: int, ch: str) -> int:
        """The DFA state after ``ch`` from ``state``."""
        found = self._moves[state].get(ch)
        if found is None:
            if len(self._sets) > _MAX_DFA_STATES:
                sets = self._sets[state]
                self._reset()
                state = self._intern(sets)
            found = self._intern(self._step(self._sets[state], ch))
            self._moves[state][ch] = found
        return found

    def accepting(self, state: int) -> bool:
        return self._accepting[state]

    def fullmatch(self, text: str) -> bool:
        state = self.start
        for ch in text:
            state = self.move(state, ch)
            if state == self.dead:
                return False
        return self._accepting[state]

    def prefix_ends(self, text: str) -> Iterator[int]:
        """Each ``k`` (ascending) such that ``text[:k]`` matches the whole pattern."""
        state = self.start
        if self._accepting[state]:
            yield 0
        for index, ch in enumerate(text):
            state = self.move(state, ch)
            if state == self.dead:
                return
            if self._accepting[state]:
                yield index + 1

    def search(self, text: str, pos: int = 0) -> tuple[int, int] | None:
        """The leftmost match at or after ``pos``, the longest of those that start there.

        That is what Go's leftmost-first search gives for these patterns, whose only repetition
        is a greedy ``.*``. Each NFA state keeps the leftmost start that reaches it (two threads
        in one state have the same future), so the scan is linear in the text.
        """
        threads: dict[int, int] = {}  # NFA state -> leftmost start reaching it
        best: tuple[int, int] | None = None
        index = pos
        while True:
            if best is None:  # a match may still start here
                for state in self._closure((0,), at_start=index == 0):
                    threads.setdefault(state, index)
            start = threads.get(self._accept)
            if start is not None:
                if best is None or start < best[0] or (start == best[0] and index > best[1]):
                    best = (start, index)
                # A thread that started later can no longer win.
                threads = {s: st for s, st in threads.items() if st <= best[0]}
            if index >= len(text):
                return best
            ch = text[index]
            moved: dict[int, int] = {}
            for state, begun in threads.items():
                if state == self._accept:
                    continue
                node = self._nodes[state]
                if node.op not in (_CHAR, _STAR) or node.test is None or not node.test(ch):
                    continue
                target = state + 1 if node.op == _CHAR else state
                for reached in self._closure((target,), at_start=False):
                    if begun < moved.get(reached, len(text) + 1):
                        moved[reached] = begun
            threads = moved
            index += 1
            if best is not None and not threads:
                return best


# --- shell patterns: ${V#p} ${V%p} ${V/p/r} ---------------------------------------------------


def _shell_tokens(pattern: str) -> list[str]:
    """The pattern as tokens, each escape kept with the character it escapes (BuildKit's rules:
    ``\\}`` and ``\\/`` lose the backslash, ``\\*`` ``\\?`` ``\\\\`` are literal, any other
    escape is an error)."""
    tokens: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        i += 1
        if ch != "\\":
            tokens.append(ch)
            continue
        following = pattern[i] if i < len(pattern) else ""
        if following in ("}", "/"):
            continue
        if following not in ("*", "?", "\\"):
            raise PatternError(f"invalid escape '\\{following}'")
        tokens.append("\\" + following)
        i += 1
    return tokens


def compile_shell_pattern(pattern: str, *, reverse: bool = False) -> Automaton:
    """A ``${V#pattern}`` pattern; ``reverse`` matches the reversed pattern (for ``%``)."""
    tokens = _shell_tokens(pattern)
    if reverse:
        tokens.reverse()
    nodes: list[_Node] = []
    for token in tokens:
        if token == "*":
            nodes.append(_Node(_STAR, _not_newline))
        elif token == "?":
            nodes.append(_Node(_CHAR, _not_newline))
        else:
            nodes.append(_Node(_CHAR, _is(token[-1])))
    return Automaton(tuple(nodes))


def trim_prefix(pattern: str, value: str, *, longest: bool) -> str:
    """``${V#p}`` (shortest) and ``${V##p}`` (longest): ``value`` without a matching prefix."""
    ends = list(compile_shell_pattern(pattern).prefix_ends(value))
    if not ends:
        return value
    return value[(ends[-1] if longest else ends[0]):]


def trim_suffix(pattern: str, value: str, *, longest: bool) -> str:
    """``${V%p}`` and ``${V%%p}``: the shortest or longest matching suffix removed."""
    ends = list(compile_shell_pattern(pattern, reverse=True).prefix_ends(value[::-1]))
    if not ends:
        return value
    cut = ends[-1] if longest else ends[0]
    return value[:len(value) - cut]


def replace(pattern: str, value: str, replacement: str, *, every: bool) -> str:
    """``${V/p/r}`` and ``${V//p/r}``, as Go's ``ReplaceAllString`` and a first-match splice.

    Like Go, an empty match right after a previous match is not replaced, and the search always
    advances by at least one character.
    """
    automaton = compile_shell_pattern(pattern)
    if not every:
        found = automaton.search(value)
        if found is None:
            return value
        return value[:found[0]] + replacement + value[found[1]:]
    out: list[str] = []
    last_end = 0
    pos = 0
    while pos <= len(value):
        found = automaton.search(value, pos)
        if found is None:
            break
        start, end = found
        out.append(value[last_end:start])
        if end > last_end or start == 0:
            out.append(replacement)
        last_end = end
        pos = pos + 1 if pos + 1 > end else end
    out.append(value[last_end:])
    return "".join(out)


# --- path patterns: .dockerignore and COPY --exclude --------------------------------------------


@dataclass(frozen=True)
class PathPattern:
    """One cleaned ``.dockerignore`` pattern, matched as moby/patternmatcher matches it.

    patternmatcher compares a pattern without wildcards as a string, ``foo/**`` as a prefix and
    ``**/foo`` as a suffix, and anything else as a regular expression: kept here as ``kind``.
    """

    text: str
    kind: str  # "exact", "prefix", "suffix" or "automaton"
    automaton: Automaton | None = None

    def match(self, path: str) -> bool:
        if self.kind == "exact":
            return path == self.text
        if self.kind == "prefix":
            return path.startswith(self.text[:-2])
        if self.kind == "suffix":
            suffix = self.text[2:]
            return path.endswith(suffix) or (suffix[:1] == "/" and path == suffix[1:])
        assert self.automaton is not None
        return self.automaton.fullmatch(path)

    def match_or_parent(self, path: str) -> bool:
        """True when ``path`` or one of its parent directories matches."""
        if self.kind != "automaton":
            if self.match(path):
                return True
            cut = path.find("/")
            while cut >= 0:
                if self.match(path[:cut]):
                    return True
                cut = path.find("/", cut + 1)
            return False
        # One pass: a parent matches when the DFA accepts just before one of the '/'.
        assert self.automaton is not None
        automaton = self.automaton
        state = automaton.start
        for ch in path:
            if ch == "/" and automaton.accepting(state):
                return True
            state = automaton.move(state, ch)
            if state == automaton.dead:
                return False
        return automaton.accepting(state)


def _class_char(body: str, i: int, pattern: str) -> tuple[str, int]:
    """One class member as ``filepath.Match`` reads it (its ``getEsc``): ``-`` and ``]`` are
    refused unescaped, and a backslash escapes the next character."""
    if i >= len(body) or body[i] in "-]":
        raise PatternError(f"syntax error in pattern {pattern!r}")
    if body[i] == "\\":
        i += 1
        if i >= len(body):
            raise PatternError(f"syntax error in pattern {pattern!r}")
    return body[i], i + 1


def _parse_class(pattern: str, start: int) -> tuple[Test, int]:
    """The class opening at ``pattern[start] == '['``: its test and the index after ``]``."""
    i = start + 1
    negated = pattern[i:i + 1] == "^"
    if negated:
        i += 1
    ranges: list[tuple[str, str]] = []
    while True:
        if i >= len(pattern):
            raise PatternError(f"syntax error in pattern {pattern!r}")
        if pattern[i] == "]" and ranges:
            i += 1
            break
        if pattern[i] in "*?[":
            # Docker writes these into its regular expression unchanged, where they stop being
            # class members ("[*]" becomes "[[^/]*]"); kiln refuses rather than guess.
            raise PatternError(f"unsupported {pattern[i]!r} in a character class in pattern "
                               f"{pattern!r}")
        low, i = _class_char(pattern, i, pattern)
        high = low
        if i < len(pattern) and pattern[i] == "-":
            high, i = _class_char(pattern, i + 1, pattern)
            if high < low:
                raise PatternError(f"syntax error in pattern {pattern!r}: range {low}-{high} "
                                   "is reversed")
        ranges.append((low, high))
    members = tuple(ranges)

    def test(ch: str) -> bool:
        inside = any(low <= ch <= high for low, high in members)
        return inside != negated

    return test, i


def compile_path_pattern(text: str) -> PathPattern:
    """A cleaned pattern (no leading ``/``, no ``!``) as patternmatcher compiles it."""
    nodes: list[_Node] = []
    kind = "exact"
    i = 0
    step = 0
    while i < len(text):
        ch = text[i]
        if ch == "*" and text[i + 1:i + 2] == "*":
            i += 2
            if text[i:i + 1] == "/":
                i += 1
            if i >= len(text):
                if kind == "exact":
                    kind = "prefix"
                else:
                    nodes.append(_Node(_STAR, _not_newline))
                    kind = "automaton"
            else:
                # (.*/)? : either nothing, or anything up to and including a '/'
                skip_at = len(nodes)
                nodes.append(_Node(_SKIP))
                nodes.append(_Node(_STAR, _not_newline))
                nodes.append(_Node(_CHAR, _is("/")))
                nodes[skip_at] = _Node(_SKIP, to=len(nodes))
                kind = "automaton"
            if step == 0:
                kind = "suffix"
        elif ch == "*":
            nodes.append(_Node(_STAR, _not_slash))
            kind = "automaton"
            i += 1
        elif ch == "?":
            nodes.append(_Node(_CHAR, _not_slash))
            kind = "automaton"
            i += 1
        elif ch == "\\":
            if i + 1 >= len(text):
                raise PatternError(f"syntax error in pattern {text!r}: it ends in a backslash")
            if text[i + 1].isalnum():
                # Go's regexp reads these as classes or assertions (\d, \b), not letters.
                raise PatternError(f"unsupported escape '\\{text[i + 1]}' in pattern {text!r}")
            nodes.append(_Node(_CHAR, _is(text[i + 1])))
            kind = "automaton"
            i += 2
        elif ch == "[":
            test, i = _parse_class(text, i)
            nodes.append(_Node(_CHAR, test))
            kind = "automaton"
        elif ch == "]":
            nodes.append(_Node(_CHAR, _is(ch)))
            kind = "automaton"
            i += 1
        elif ch == "^":
            nodes.append(_Node(_AT_START))  # Docker leaves '^' to the regex: start of text
            i += 1
        else:
            nodes.append(_Node(_CHAR, _is(ch)))
            i += 1
        step += 1
    return PathPattern(text, kind, Automaton(tuple(nodes)) if kind == "automaton" else None)
