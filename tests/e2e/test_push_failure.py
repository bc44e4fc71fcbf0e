"""A registry that dies in the middle of a push: the build fails in one line, no tag exists;
the registry back, the same build pushes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.kiln import write_context
from tests.support.registry import Registry
from tests.support.runtime import inspect_image

pytestmark = pytest.mark.e2e


def test_a_registry_killed_mid_push_fails_the_build_and_leaves_no_tag(
        tmp_path: Path, busybox_image: str) -> None:
    # A 300 MB incompressible layer keeps the push busy long enough to be cut.
    context = write_context(tmp_path / "context", f"FROM {busybox_image}\n"
                            "RUN head -c 314572800 /dev/urandom > /big\n")
    target = Registry(tmp_path / "target").start()
    try:
        ref = f"{target.host}/dying/app:1"
        args = [sys.executable, "-m", "executor.cli", "--context", str(context),
                "--dockerfile", str(context / "Dockerfile"), "--destination", ref,
                "--insecure", "--insecure-pull"]
        proc = subprocess.Popen([*args, "--root", str(tmp_path / "root1")],
                                stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        assert proc.stderr is not None
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "Pushing image to" in line:
                target.kill()
                break
        lines += proc.stderr.readlines()
        assert proc.wait(timeout=120) == 1, "".join(lines)
        assert "Traceback" not in "".join(lines)
        assert lines[-1] == (f"error building image: cannot reach registry {target.host}: "
                             "connection refused\n")

        target.start()
        assert target.tags("dying/app") == []
        again = subprocess.run([*args, "--root", str(tmp_path / "root2")], capture_output=True,
                               text=True, timeout=300, check=False)
        assert again.returncode == 0, again.stderr
        assert len(inspect_image(ref)["Layers"]) == 2
    finally:
        target.stop()
