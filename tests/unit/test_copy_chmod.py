"""``--chmod`` values: octal, and symbolic clauses applied to each file's own mode (chmod(1))."""

from __future__ import annotations

import pytest

from executor.instructions.copy import Chmod


@pytest.mark.parametrize(("spec", "mode", "is_dir", "expected"), [
    ("0755", 0o600, False, 0o755),
    ("644", 0o777, True, 0o644),
    ("u+x", 0o644, False, 0o744),
    ("g-w", 0o664, False, 0o644),
    ("u+x,g-w", 0o664, False, 0o744),
    ("o=r", 0o777, False, 0o774),
    ("a-w", 0o666, False, 0o444),
    ("+x", 0o644, False, 0o755),
    ("go=", 0o755, False, 0o700),
    ("a+X", 0o644, False, 0o644),
    ("a+X", 0o644, True, 0o755),
    ("a+X", 0o744, False, 0o755),
    ("u+s", 0o755, False, 0o4755),
    ("g+s", 0o755, True, 0o2755),
    ("+t", 0o777, True, 0o1777),
    ("u=rwx,g=rx,o=", 0o000, False, 0o750),
    ("u+r-w", 0o600, False, 0o400),
])
def test_chmod_applies_like_chmod_1(spec: str, mode: int, is_dir: bool, expected: int) -> None:
    assert Chmod.parse(spec).apply(mode, is_dir) == expected


@pytest.mark.parametrize("spec", ["", "u+q", "8755", "x+u", "u+x,", "rwx"])
def test_chmod_refuses_what_is_neither_octal_nor_symbolic(spec: str) -> None:
    with pytest.raises(ValueError):
        Chmod.parse(spec)
