"""Boolean flags read as kaniko's (Go pflag) do: bare is true, ``=true``/``=false`` say so."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from executor.cli import main
from executor.options import BuildOptions


def options_for(args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> BuildOptions:
    seen: list[BuildOptions] = []
    monkeypatch.setattr("executor.build.run_build", seen.append)
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    result = CliRunner().invoke(main, ["--context", str(tmp_path), *args])
    assert result.exit_code == 0, result.output
    return seen[0]


@pytest.mark.parametrize(("args", "expected"), [
    (["--no-push"], True),
    (["--no-push=true"], True),
    (["--no-push=TRUE"], True),
    (["--no-push=1", "--reproducible=false"], True),
])
def test_a_bare_or_true_flag_is_on(args: list[str], expected: bool, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    options = options_for(args, tmp_path, monkeypatch)
    assert options.no_push is expected
    assert options.reproducible is False


def test_false_turns_a_flag_off_and_a_default_true_flag_can_be_bare(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    options = options_for(["--no-push", "--cleanup=false", "--ignore-var-run"], tmp_path,
                          monkeypatch)
    assert options.cleanup is False and options.ignore_var_run is True
    options = options_for(["--no-push", "--ignore-var-run=false"], tmp_path, monkeypatch)
    assert options.ignore_var_run is False


def test_a_value_that_is_not_a_boolean_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--context", str(tmp_path), "--no-push=maybe"])
    assert result.exit_code == 2
    assert "'maybe' is not a valid boolean" in result.output


def test_kanikos_deprecated_spellings_still_work_with_its_warning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[BuildOptions] = []
    monkeypatch.setattr("executor.build.run_build", seen.append)
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    result = CliRunner().invoke(main, ["--context", str(tmp_path), "--no-push",
                                       "--snapshotMode=redo", "--customPlatform=linux/arm64",
                                       "--tarPath", str(tmp_path / "image.tar")])
    assert result.exit_code == 0, result.output
    options = seen[0]
    assert (options.snapshot_mode, options.custom_platform, options.tar_path) == (
        "redo", "linux/arm64", tmp_path / "image.tar")
    for old, new in (("--snapshotMode", "--snapshot-mode"),
                     ("--customPlatform", "--custom-platform"), ("--tarPath", "--tar-path")):
        assert f"Flag {old} is deprecated. Use: {new}" in result.output


@pytest.mark.parametrize(("bucket", "context"), [
    ("my-bucket", "gs://my-bucket"),
    ("s3://my-bucket/ctx.tar.gz", "s3://my-bucket/ctx.tar.gz"),
])
def test_a_bucket_is_a_context_in_it(bucket: str, context: str,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[BuildOptions] = []
    monkeypatch.setattr("executor.build.run_build", seen.append)
    result = CliRunner().invoke(main, ["--no-push", "--bucket", bucket])
    assert result.exit_code == 0, result.output
    assert seen[0].context_source == context


def test_a_bucket_does_not_override_a_context_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[BuildOptions] = []
    monkeypatch.setattr("executor.build.run_build", seen.append)
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    result = CliRunner().invoke(main, ["--context", str(tmp_path), "--no-push", "--bucket", "b"])
    assert result.exit_code == 0, result.output
    assert seen[0].context == tmp_path and seen[0].context_source is None
    assert "--bucket b is not used" in result.output


def test_an_old_and_a_new_spelling_that_disagree_are_refused(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    result = CliRunner().invoke(main, ["--context", str(tmp_path), "--no-push",
                                       "--customPlatform=linux/arm64",
                                       "--custom-platform=linux/amd64"])
    assert result.exit_code == 1
    assert ("--customPlatform linux/arm64 and --custom-platform linux/amd64 disagree"
            in result.output)
