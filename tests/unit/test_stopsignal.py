"""STOPSIGNAL values Docker accepts: numbers, names with or without SIG, real-time offsets."""

from __future__ import annotations

import pytest

from executor.instructions.metadata import _valid_signal


@pytest.mark.parametrize("text", ["SIGTERM", "TERM", "9", "sigkill", "SIGRTMIN+3", "RTMAX-1",
                                  "SIGWINCH", "64"])
def test_accepted_signals(text: str) -> None:
    assert _valid_signal(text)


@pytest.mark.parametrize("text", ["NOTASIGNAL", "0", "65", "SIG", "RTMIN+99", "-1", "SIGTERM2"])
def test_refused_signals(text: str) -> None:
    assert not _valid_signal(text)
