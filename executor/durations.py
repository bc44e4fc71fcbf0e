"""Go duration strings (``30s``, ``1h30m``, ``336h``): HEALTHCHECK's flags and kaniko's
``--cache-ttl`` take them, so both read them the same way (Go's ``time.ParseDuration``)."""

from __future__ import annotations

import re

_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
            "m": 60_000_000_000, "h": 3_600_000_000_000}


def parse_duration_ns(text: str) -> int:
    """Nanoseconds in ``text``; ValueError when it is not a Go duration."""
    if text == "0":
        return 0
    parts = _PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"invalid duration {text!r}")
    return int(sum(float(n) * _UNIT_NS[u] for n, u in parts))
