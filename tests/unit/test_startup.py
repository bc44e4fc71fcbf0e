"""``executor version`` and ``--help`` start quickly: heavy modules load only for a build."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

LIMIT_S = 0.3


@pytest.mark.parametrize("args", [["version"], ["--help"]])
def test_the_command_answers_within_300_ms(args: list[str]) -> None:
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "executor.cli", *args], check=True,
                       capture_output=True)
        timings.append(time.perf_counter() - started)
    assert min(timings) < LIMIT_S, timings


def test_version_imports_no_build_machinery() -> None:
    code = ("import sys; from executor.cli import main\n"
            "try: main(['version'])\nexcept SystemExit: pass\n"
            "heavy = [m for m in ('executor.build', 'requests', 'snapshot.snapshot', 'isal',"
            " 'zstandard', 'dockerfile') if m in sys.modules]\n"
            "print('heavy:', ','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout
    assert out.splitlines()[-1] == "heavy: "
