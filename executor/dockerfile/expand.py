"""BuildKit's word expansion: quotes, escapes and ``$VAR`` / ``${VAR...}`` substitution.

The Dockerfile parser leaves arguments as written (``ENV A="b c"`` arrives with its quotes), and
Docker applies its own small shell lexer to the arguments of ADD, COPY, ENV, EXPOSE, FROM, LABEL,
STOPSIGNAL, USER, VOLUME and WORKDIR. This module implements that lexer's documented behaviour so
that a value means the same in kiln as in ``docker build``:

- ``'...'`` is literal; ``"..."`` expands ``$`` and lets the escape character quote ``"``, ``$``
  and itself only; outside quotes the escape character makes the next character literal.
- ``$name``, ``${name}``, ``${name:-word}``, ``${name-word}``, ``${name:+word}``, ``${name+word}``,
  ``${name:?msg}``, ``${name?msg}``, ``${name#pat}``, ``${name##pat}``, ``${name%pat}``,
  ``${name%%pat}``, ``${name/pat/repl}``, ``${name//pat/repl}`` (patterns use ``*`` and ``?``).
- An unset variable expands to the empty string.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from executor import patterns

_SPECIAL_PARAMS = frozenset("@*#?-$!0")
# Deeper nesting is refused here and, before BuildKit's parser sees it, in parse.py.
MAX_SUBSTITUTION_DEPTH = 64


class ExpansionError(ValueError):
    """A word that cannot be expanded (unbalanced quote, bad substitution, ``${v:?msg}``)."""


@dataclass
class _Words:
    """Accumulates whitespace-split words; quoted text and escapes never split."""

    words: list[str] = field(default_factory=list)
    current: list[str] = field(default_factory=list)
    in_word: bool = False

    def add_char(self, ch: str) -> None:
        if ch.isspace():
            if self.in_word and self.current:
                self.words.append("".join(self.current))
                self.current = []
                self.in_word = False
        else:
            self.add_raw(ch)

    def add_text(self, text: str) -> None:
        for ch in text:
            self.add_char(ch)

    def add_raw(self, text: str) -> None:
        self.current.append(text)
        self.in_word = True

    def result(self) -> list[str]:
        if self.current:
            self.words.append("".join(self.current))
            self.current = []
        return self.words


class _Lexer:
    """One pass over one word; ``pos`` moves forward only."""

    def __init__(self, text: str, env: Mapping[str, str], escape: str,
                 process_quotes: bool = True) -> None:
        self.text = text
        self.env = env
        self.escape = escape
        self.process_quotes = process_quotes
        self.pos = 0
        self.raw_escapes = False
        self.depth = 0

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def next(self) -> str:
        ch = self.peek()
        if ch:
            self.pos += 1
        return ch

    def process(self, stop: str = "", raw_escapes: bool = False) -> tuple[str, list[str]]:
        """Read up to ``stop`` (or the end), returning the expanded text and its words."""
        saved, self.raw_escapes = self.raw_escapes, raw_escapes
        try:
            return self._process(stop)
        finally:
            self.raw_escapes = saved

    def _process(self, stop: str) -> tuple[str, list[str]]:
        out: list[str] = []
        words = _Words()
        while self.peek():
            ch = self.peek()
            if stop and ch == stop:
                self.next()
                return "".join(out), words.result()
            if ch == "$":
                value = self.dollar()
                out.append(value)
                words.add_text(value)  # a variable's value is split on whitespace
            elif ch == "'" and self.process_quotes:
                value = self.single_quoted()
                out.append(value)
                words.add_raw(value)
            elif ch == '"' and self.process_quotes:
                value = self.double_quoted()
                out.append(value)
                words.add_raw(value)
            else:
                ch = self.next()
                if ch == self.escape:
                    if self.raw_escapes:
                        words.add_raw(ch)
                        out.append(ch)
                    ch = self.next()
                    if not ch:
                        break
                    words.add_raw(ch)
                else:
                    words.add_char(ch)
                out.append(ch)
        if stop:
            raise ExpansionError(f"unexpected end of statement while looking for matching {stop}")
        return "".join(out), words.result()

    def single_quoted(self) -> str:
        self.next()
        end = self.text.find("'", self.pos)
        if end < 0:
            raise ExpansionError("unexpected end of statement while looking for matching "
                                 "single-quote")
        value = self.text[self.pos:end]
        self.pos = end + 1
        return value

    def double_quoted(self) -> str:
        self.next()
        out: list[str] = []
        while True:
            ch = self.peek()
            if not ch:
                raise ExpansionError("unexpected end of statement while looking for matching "
                                     "double-quote")
            if ch == '"':
                self.next()
                return "".join(out)
            if ch == "$":
                out.append(self.dollar())
                continue
            ch = self.next()
            if ch == self.escape:
                if self.raw_escapes:
                    out.append(ch)
                following = self.peek()
                if not following:
                    continue
                if following in ('"', "$", self.escape):
                    ch = self.next()
            out.append(ch)

    def name(self) -> str:
        start = self.pos
        if self.peek().isdigit():
            while self.peek().isdigit():
                self.next()
            return self.text[start:self.pos]
        if self.peek() in _SPECIAL_PARAMS:
            return self.next()
        while self.peek() and (self.peek().isalnum() or self.peek() == "_"):
            self.next()
        return self.text[start:self.pos]

    def lookup(self, name: str) -> tuple[str, bool]:
        if name in self.env:
            return self.env[name], True
        return "", False

    def dollar(self) -> str:
        """A ``$name`` or ``${...}``; nesting is bounded, so a hostile word cannot exhaust the
        stack (each level is three frames of this recursive reader)."""
        if self.depth >= MAX_SUBSTITUTION_DEPTH:
            raise ExpansionError("variable substitutions (${...}) are nested more than "
                                 f"{MAX_SUBSTITUTION_DEPTH} deep")
        self.depth += 1
        try:
            return self._dollar()
        finally:
            self.depth -= 1

    def _dollar(self) -> str:
        self.next()
        if self.peek() != "{":
            name = self.name()
            return self.lookup(name)[0] if name else "$"
        self.next()
        if not self.peek():
            raise ExpansionError("syntax error: missing '}'")
        if self.peek() in "{}:":
            raise ExpansionError("syntax error: bad substitution")
        name = self.name()
        op = self.next()
        if not op:
            raise ExpansionError("syntax error: missing '}'")
        if op == "}":
            return self.lookup(name)[0]
        if op == "/":
            return self.replace(name)
        null_is_unset = op == ":"
        if null_is_unset:
            op = self.next()
        if op not in ("+", "-", "?", "#", "%"):
            shown = (":" if null_is_unset else "") + op
            raise ExpansionError(f"unsupported modifier ({shown}) in substitution")
        try:
            word, _ = self.process("}", raw_escapes=op in "#%")
        except ExpansionError:
            if not self.peek():
                raise ExpansionError("syntax error: missing '}'") from None
            raise
        value, is_set = self.lookup(name)
        empty = not is_set or (null_is_unset and value == "")
        if op == "-":
            return word if empty else value
        if op == "+":
            return "" if empty else word
        if op == "?":
            if not is_set:
                raise ExpansionError(f"{name}: {word or 'is not allowed to be unset'}")
            if null_is_unset and value == "":
                raise ExpansionError(f"{name}: {word or 'is not allowed to be empty'}")
            return value
        greedy = word.startswith(op)
        if greedy:
            word = word[1:]
        return _trim(op, word, value, greedy)

    def replace(self, name: str) -> str:
        replace_all = self.peek() == "/"
        if replace_all:
            self.next()
        try:
            pattern, _ = self.process("/", raw_escapes=True)
        except ExpansionError:
            raise ExpansionError("syntax error: missing '/' in ${}") from None
        try:
            replacement, _ = self.process("}", raw_escapes=True)
        except ExpansionError:
            raise ExpansionError("syntax error: missing '}'") from None
        value, _ = self.lookup(name)
        try:
            return patterns.replace(pattern, value, replacement, every=replace_all)
        except patterns.PatternError as exc:
            raise ExpansionError(f"invalid pattern ({pattern}) in substitution: {exc}") from None


def _trim(op: str, pattern: str, value: str, longest: bool) -> str:
    """``${V#p}`` / ``${V##p}`` (``op`` ``#``) and ``${V%p}`` / ``${V%%p}`` (``op`` ``%``)."""
    try:
        if op == "#":
            return patterns.trim_prefix(pattern, value, longest=longest)
        return patterns.trim_suffix(pattern, value, longest=longest)
    except patterns.PatternError as exc:
        raise ExpansionError(f"invalid pattern ({pattern}) in substitution: {exc}") from None


def expand_word(text: str, env: Mapping[str, str], escape: str = "\\", *,
                process_quotes: bool = True) -> str:
    """Expand one word as Docker does for ENV, LABEL, WORKDIR, USER, COPY ... arguments.

    ``process_quotes=False`` leaves quotes as text, as BuildKit does for heredoc bodies.
    """
    return _Lexer(text, env, escape, process_quotes).process()[0]


def expand_words(text: str, env: Mapping[str, str], escape: str = "\\") -> list[str]:
    """Expand then split on unquoted whitespace (EXPOSE, VOLUME, shell-form lists)."""
    return _Lexer(text, env, escape).process()[1]
