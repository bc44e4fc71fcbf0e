"""kaniko's snapshot flags: accepted, and every mode stays exact."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.kiln import run_executor, write_context
from tests.support.registry import Registry
from tests.support.runtime import inspect_image, run_image

pytestmark = pytest.mark.e2e

SAME_SIZE_REWRITE = """FROM {base}
RUN echo aaaa > /x && touch -t 202001010000 /x
RUN echo bbbb > /x && touch -t 202001010000 /x
COPY note.txt /note.txt
"""


@pytest.mark.parametrize("mode", ["full", "redo", "time"])
def test_a_same_size_rewrite_with_the_old_mtime_is_captured_in_every_mode(
        mode: str, tmp_path: Path, registry: Registry, busybox_image: str) -> None:
    context = write_context(tmp_path / "context", SAME_SIZE_REWRITE.format(base=busybox_image),
                            {"note.txt": "n\n"})
    ref = f"{registry.host}/modes/{mode}:1"
    result = run_executor(context, tmp_path / "root", "--destination", ref, "--insecure",
                          "--insecure-pull", "--snapshot-mode", mode, "--use-new-run")
    assert result.exit_code == 0, result.stderr
    assert len(inspect_image(ref)["Layers"]) == len(inspect_image(busybox_image)["Layers"]) + 3
    out = run_image(ref, ["cat", "/x"], workdir=tmp_path / "run")
    assert out.stdout == "bbbb\n"


def test_single_snapshot_adds_one_layer_with_everything(
        tmp_path: Path, registry: Registry, busybox_image: str) -> None:
    context = write_context(tmp_path / "context", SAME_SIZE_REWRITE.format(base=busybox_image),
                            {"note.txt": "n\n"})
    ref = f"{registry.host}/modes/single:1"
    result = run_executor(context, tmp_path / "root", "--destination", ref, "--insecure",
                          "--insecure-pull", "--single-snapshot")
    assert result.exit_code == 0, result.stderr
    assert len(inspect_image(ref)["Layers"]) == len(inspect_image(busybox_image)["Layers"]) + 1
    out = run_image(ref, ["cat", "/x", "/note.txt"], workdir=tmp_path / "run")
    assert out.stdout == "bbbb\nn\n"
