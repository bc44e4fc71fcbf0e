"""The ``--context`` grammar, ``--git`` flags, and context tarballs that try to leave home."""

from __future__ import annotations

import dataclasses
import io
import os
import tarfile
from pathlib import Path

import pytest

from executor.contexts import display, fetch, is_git_url, is_remote, sub_path
from executor.contexts.git import GitSource, _environment
from executor.contexts.s3 import split_bucket_url
from executor.contexts.tarball import unpack_tarball
from executor.errors import ContextError, OptionsError
from executor.options import GitOptions, parse_git_options


@pytest.mark.parametrize(("context", "remote"), [
    ("/workspace/", False), ("dir:///workspace", False), ("relative/dir", False),
    ("tar://stdin", True), ("git://github.com/a/b.git", True), ("s3://b/k.tgz", True),
])
def test_which_contexts_are_fetched(context: str, remote: bool) -> None:
    assert is_remote(context) is remote


@pytest.mark.parametrize(("context", "git"), [
    ("git://github.com/a/b.git#refs/heads/x", True),
    ("https://example.com/a/b.git", True),
    ("https://example.com/a/b.git#refs/tags/v1#" + "a" * 40, True),
    ("http://127.0.0.1:8080/git/app.git/", True),
    ("https://example.com/ctx.tar.gz", False),
    ("https://example.com/ctx.tar.gz#x.git", False),
    ("s3://bucket/repo.git", False),
])
def test_which_urls_are_git_repositories(context: str, git: bool) -> None:
    assert is_git_url(context) is git


@pytest.mark.parametrize(("source", "method", "expected"), [
    ("git://github.com/acme/app.git", None, GitSource("https://github.com/acme/app.git")),
    ("git://github.com/acme/app.git#refs/heads/dev", "http",
     GitSource("http://github.com/acme/app.git", "refs/heads/dev")),
    ("git://h/app.git#refs/heads/main#" + "b" * 40, "git",
     GitSource("git://h/app.git", "refs/heads/main", "b" * 40)),
    ("git://h/app.git#refs/pull/7/head", "ssh",  # kaniko: anything else means https
     GitSource("https://h/app.git", "refs/pull/7/head")),
    ("https://h/app.git##" + "c" * 40, None, GitSource("https://h/app.git", None, "c" * 40)),
])
def test_git_context_syntax_follows_kaniko(source: str, method: str | None, expected: GitSource,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    if method is None:
        monkeypatch.delenv("GIT_PULL_METHOD", raising=False)
    else:
        monkeypatch.setenv("GIT_PULL_METHOD", method)
    assert GitSource.parse(source) == expected


@pytest.mark.parametrize(("flags", "expected"), [
    ((), GitOptions()),
    (("branch=main",), GitOptions(branch="main")),
    (("branch=main", "single-branch=true"), GitOptions(branch="main", single_branch=True)),
    (("branch=main,single-branch=true,recurse-submodules=1,insecure-skip-tls=T",),
     GitOptions("main", True, True, True)),
    (("branch=a,b",), GitOptions(branch="a,b")),  # kaniko reads one flag as one pair
    (("depth=1",), GitOptions(depth=1)),
])
def test_git_flags(flags: tuple[str, ...], expected: GitOptions) -> None:
    assert parse_git_options(flags) == expected


@pytest.mark.parametrize(("flag", "message"), [
    ("branch", "--git branch: invalid git flag, must be in the key=value format"),
    ("single-branch=yes", "--git single-branch=yes: 'yes' is not true or false"),
    ("colour=red", "--git colour=red: unknown key 'colour' (expected one of branch, "
                   "single-branch, recurse-submodules, insecure-skip-tls, depth)"),
])
def test_bad_git_flags(flag: str, message: str) -> None:
    with pytest.raises(OptionsError) as error:
        parse_git_options((flag,))
    assert str(error.value) == message


def test_messages_hide_a_password_in_the_url() -> None:
    assert display("https://user:s3cret@example.com/a.git#x") == "https://***@example.com/a.git#x"
    assert display("https://tok@example.com/a.git") == "https://***@example.com/a.git"
    assert display("git://example.com/a.git") == "git://example.com/a.git"


def test_git_credentials_go_to_the_context_host_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_USERNAME", "someone")
    monkeypatch.setenv("GIT_PASSWORD", "pw")
    monkeypatch.setenv("GIT_TOKEN", "tok")
    monkeypatch.delenv("GIT_CONFIG_COUNT", raising=False)
    env = _environment("https://git.example.com:8443/a.git", GitOptions())
    # kaniko: a token wins, sent as the user name with an empty password.
    assert (env["KILN_GIT_USERNAME"], env["KILN_GIT_PASSWORD"]) == ("tok", "")
    config = {env[f"GIT_CONFIG_KEY_{i}"]: env[f"GIT_CONFIG_VALUE_{i}"]
              for i in range(int(env["GIT_CONFIG_COUNT"]))}
    assert config["credential.helper"] == ""
    assert "credential.https://git.example.com:8443.helper" in config
    assert "tok" not in " ".join(config.values())
    assert env["GIT_TERMINAL_PROMPT"] == "0"


def test_insecure_skip_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    env = _environment("https://h/a.git", GitOptions(insecure_skip_tls=True))
    assert env["GIT_SSL_NO_VERIFY"] == "1"


def tarball(entries: list[tarfile.TarInfo | tuple[str, bytes]]) -> io.BytesIO:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tar.addfile(entry)
            else:
                info = tarfile.TarInfo(entry[0])
                info.size = len(entry[1])
                tar.addfile(info, io.BytesIO(entry[1]))
    raw.seek(0)
    return raw


def symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


@pytest.mark.parametrize(("entries", "message"), [
    ([("../evil", b"x")], 'entry "../evil" escapes the root'),
    ([("a/../../evil", b"x")], 'entry "a/../../evil" escapes the root'),
    ([("/etc/evil", b"x")], 'entry "/etc/evil" is an absolute path'),
])
def test_a_context_tarball_cannot_write_outside(tmp_path: Path, entries: list[tuple[str, bytes]],
                                                message: str) -> None:
    target = tmp_path / "ctx"
    target.mkdir()
    with pytest.raises(ContextError) as error:
        unpack_tarball(tarball(list(entries)), target, "tar://stdin")
    assert str(error.value) == f"--context tar://stdin: {message}"
    assert not (tmp_path / "evil").exists()


def test_a_symlink_in_a_context_tarball_is_not_followed_out(tmp_path: Path) -> None:
    target, outside = tmp_path / "ctx", tmp_path / "outside"
    target.mkdir()
    outside.mkdir()
    stream = tarball([symlink("link", str(outside)), ("link/evil", b"x")])
    unpack_tarball(stream, target, "tar://x")
    # Resolved as a process chrooted into the context would resolve it: inside.
    assert not (outside / "evil").exists()
    assert (target / str(outside).lstrip("/") / "evil").read_bytes() == b"x"


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_tar_paths_in_every_compression(tmp_path: Path, compression: str) -> None:
    import gzip

    import zstandard

    data = tarball([("Dockerfile", b"FROM scratch\n"), ("dir/file.txt", b"hello\n")]).getvalue()
    data = {"none": data, "gzip": gzip.compress(data),
            "zstd": zstandard.ZstdCompressor().compress(data)}[compression]
    path = tmp_path / "ctx.tar"
    path.write_bytes(data)
    target = tmp_path / "ctx"
    target.mkdir()
    fetch(f"tar://{path}", target, GitOptions())
    assert (target / "dir" / "file.txt").read_text() == "hello\n"


@pytest.mark.parametrize(("context", "message"), [
    ("tar:///nonexistent/ctx.tar.gz",
     "--context tar:///nonexistent/ctx.tar.gz: No such file or directory"),
    ("s3:///key.tgz", "--context s3:///key.tgz: expected s3://BUCKET/PATH"),
    ("ftp://h/x", "--context ftp://h/x: unknown build context prefix 'ftp://'; use a path or "
                  "one of dir://, tar://, git://, https://, http://, s3://, gs://"),
])
def test_unusable_contexts(tmp_path: Path, context: str, message: str) -> None:
    with pytest.raises(ContextError) as error:
        fetch(context, tmp_path, GitOptions())
    assert str(error.value) == message


@pytest.mark.parametrize(("url", "expected"), [
    ("gs://test1/test2/test3", ("test1", "test2/test3")),
    ("s3://test1/test2", ("test1", "test2")),
    ("gs://test1/", ("test1", "context.tar.gz")),
    ("s3://test1", ("test1", "context.tar.gz")),
])
def test_bucket_urls_as_kaniko_reads_them(url: str, expected: tuple[str, str]) -> None:
    assert split_bucket_url(url) == expected


def test_sub_path_must_stay_inside_the_context(tmp_path: Path) -> None:
    (tmp_path / "ctx" / "app").mkdir(parents=True)
    (tmp_path / "ctx" / "out").symlink_to(tmp_path)
    assert sub_path(tmp_path / "ctx", "app", "git://h/r.git") == tmp_path / "ctx" / "app"
    with pytest.raises(ContextError) as error:
        sub_path(tmp_path / "ctx", "out", "git://h/r.git")
    assert str(error.value) == "--context-sub-path out: leads outside the context git://h/r.git"
    with pytest.raises(ContextError) as error:
        sub_path(tmp_path / "ctx", "../..", "git://h/r.git")
    assert str(error.value) == "--context-sub-path ../..: leads outside the context git://h/r.git"


@pytest.mark.parametrize(("code", "status", "message"), [
    ("NoSuchKey", 404, "no such object"),
    ("NoSuchBucket", 404, "no such bucket"),
    ("InvalidAccessKeyId", 403, "access denied (InvalidAccessKeyId; check the AWS credentials)"),
    ("SignatureDoesNotMatch", 403,
     "access denied (SignatureDoesNotMatch; check the AWS credentials)"),
    ("SlowDown", 503, "SlowDown: Please reduce your request rate."),
])
def test_s3_errors_in_a_few_words(code: str, status: int, message: str) -> None:
    from botocore.exceptions import ClientError

    from executor.contexts.s3 import _client_error

    error = ClientError({"Error": {"Code": code, "Message": "Please reduce your request rate."},
                         "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")
    assert _client_error(error) == message


def test_only_an_in_place_context_outside_volumes_and_the_kiln_dir_is_copied(
        tmp_path: Path) -> None:
    from executor.contexts import context_on_replaced_filesystem
    from executor.options import BuildOptions

    sandbox = BuildOptions(context=tmp_path, dockerfile=tmp_path / "Dockerfile",
                           root=tmp_path / "root")
    assert not context_on_replaced_filesystem(sandbox)
    in_place = BuildOptions(context=Path("/"), dockerfile=Path("/Dockerfile"), root=Path("/"),
                            kaniko_dir=tmp_path / "kaniko")
    assert not context_on_replaced_filesystem(in_place)  # the whole root: nothing to save
    (tmp_path / "kaniko" / "buildcontext").mkdir(parents=True)
    assert not context_on_replaced_filesystem(
        dataclasses.replace(in_place, context=tmp_path / "kaniko" / "buildcontext"))
    assert not context_on_replaced_filesystem(
        dataclasses.replace(in_place, context=tmp_path, ignore_paths=(str(tmp_path),)))
    assert not context_on_replaced_filesystem(
        dataclasses.replace(in_place, context=tmp_path / "missing"))


def test_a_copied_context_keeps_modes_times_and_symlinks_and_leaves_out_fifos(
        tmp_path: Path) -> None:
    from executor.contexts import copy_context

    source = tmp_path / "src"
    (source / "bin").mkdir(parents=True)
    (source / "bin" / "tool").write_text("#!/bin/sh\n")
    (source / "bin" / "tool").chmod(0o750)
    os.utime(source / "bin" / "tool", (1_000_000, 1_000_000))
    (source / "link").symlink_to("bin/tool")
    os.mkfifo(source / "pipe")
    copy_context(source, tmp_path / "copy")
    copied = tmp_path / "copy"
    assert sorted(p.name for p in copied.iterdir()) == ["bin", "link"]
    assert (copied / "bin" / "tool").stat().st_mode & 0o777 == 0o750
    assert (copied / "bin" / "tool").stat().st_mtime == 1_000_000
    assert os.readlink(copied / "link") == "bin/tool"


def test_a_context_holding_the_kiln_dir_is_copied_without_it(tmp_path: Path) -> None:
    from executor.contexts import copy_context

    source = tmp_path / "workspace"
    (source / "src").mkdir(parents=True)
    (source / "src" / "main.c").write_text("int main(void) { return 0; }\n")
    kiln_dir = source / ".kaniko"
    copy_context(source, kiln_dir / "buildcontext", leave_out=kiln_dir)
    copied = kiln_dir / "buildcontext"
    assert sorted(p.name for p in copied.iterdir()) == ["src"]
    assert (copied / "src" / "main.c").read_text().startswith("int main")
