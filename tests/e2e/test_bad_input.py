"""Bad input gives one line naming the cause and the place, a non-zero exit, nothing pushed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.kiln import run_executor, write_context
from tests.support.registry import Registry, free_port

pytestmark = pytest.mark.e2e


def build(tmp_path: Path, registry: Registry, dockerfile: str, repo: str,
          files: dict[str, str] | None = None):
    context = write_context(tmp_path / "context", dockerfile, files)
    return run_executor(context, tmp_path / "root", "--destination",
                        f"{registry.host}/{repo}:1", "--insecure", "--insecure-pull")


def assert_failed(result, line: str, exit_code: int = 1) -> None:
    assert result.exit_code == exit_code
    assert "Traceback" not in result.stderr
    assert result.last_line == f"error building image: {line}"


def test_unknown_instruction(tmp_path: Path, registry: Registry, busybox_image: str) -> None:
    result = build(tmp_path, registry, f"FROM {busybox_image}\nFOO bar\n", "bad/unknown")
    assert_failed(result, "Dockerfile:2: unknown instruction: FOO")
    assert registry.tags("bad/unknown") == []


def test_syntax_error(tmp_path: Path, registry: Registry, busybox_image: str) -> None:
    result = build(tmp_path, registry, f"FROM {busybox_image}\nRUN true\nRUN <<EOF\necho\n",
                   "bad/syntax")
    assert_failed(result, "Dockerfile:3: syntax error: unterminated heredoc")


def test_copy_source_missing_from_the_context(tmp_path: Path, registry: Registry,
                                              busybox_image: str) -> None:
    result = build(tmp_path, registry, f"FROM {busybox_image}\nCOPY missing.txt /x\n",
                   "bad/copy")
    assert_failed(result, "Dockerfile:2: COPY source 'missing.txt' matched no files in the "
                          "build context")
    assert registry.tags("bad/copy") == []


def test_run_exiting_non_zero(tmp_path: Path, registry: Registry, busybox_image: str) -> None:
    result = build(tmp_path, registry,
                   f"FROM {busybox_image}\nRUN echo fine\nRUN echo failing; exit 3\n", "bad/run")
    assert_failed(result, "Dockerfile:3: RUN exited with code 3", exit_code=3)  # as kaniko
    assert "failing" in result.stdout + result.stderr
    assert registry.tags("bad/run") == []


def test_unknown_base_image(tmp_path: Path, registry: Registry) -> None:
    result = build(tmp_path, registry, f"FROM {registry.host}/no/such:image\nRUN true\n",
                   "bad/base")
    assert_failed(result, f"pulling manifest {registry.host}/no/such:image: 404 Not Found "
                          "(MANIFEST_UNKNOWN: manifest unknown)")


def test_unreachable_registry(tmp_path: Path, registry: Registry) -> None:
    port = free_port()
    result = build(tmp_path, registry, f"FROM 127.0.0.1:{port}/some/image\n", "bad/reach")
    assert_failed(result, f"cannot reach registry 127.0.0.1:{port}: connection refused")


def test_a_workdir_a_run_replaced_with_a_file_fails_the_next_run_in_one_line(
        tmp_path: Path, registry: Registry, busybox_image: str) -> None:
    result = build(tmp_path, registry, f"FROM {busybox_image}\nWORKDIR /app/sub\n"
                   "RUN rm -rf /app && touch /app\nRUN true\n", "bad/workdir-file")
    assert result.exit_code == 1
    assert "Traceback" not in result.stderr
    assert result.last_line.startswith("error building image: Dockerfile:4: ")
    assert "/app" in result.last_line


def test_an_unreadable_mount_journal_is_one_line(tmp_path: Path) -> None:
    kiln = tmp_path / "kiln"
    (kiln / "mounts").mkdir(parents=True)
    (kiln / "mounts/journal.json").write_text("{not json")
    context = write_context(tmp_path / "context", "FROM scratch\nENV A=1\n")
    result = run_executor(context, tmp_path / "root", "--no-push", "--kaniko-dir", str(kiln))
    assert result.exit_code == 1
    assert "Traceback" not in result.stderr
    assert "journal.json" in result.last_line
