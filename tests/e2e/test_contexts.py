"""Remote build contexts, as kaniko users pass them: git, tarballs, stdin, HTTPS, object stores.

Each build runs the real ``executor`` against a real server on loopback (git daemon, git
http-backend, an HTTPS file server with a trustme CA, moto's S3 server), then the image is read
by skopeo and run by crun.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import zstandard

from tests.conftest import GIT_PASSWORD, GIT_USER
from tests.support.context_servers import (
    APP_DOCKERFILE,
    ContextServer,
    GitDaemon,
    GitRepositories,
    MotoS3,
)
from tests.support.kiln import ExecutorRun, run_executor_on
from tests.support.registry import Registry, TLSFiles
from tests.support.runtime import inspect_image, run_image
from tests.support.trees import tar_of

pytestmark = pytest.mark.e2e

#: What the app context's image prints: version.txt, then the context's top level, where the
#: .dockerignore left out .git and secret.txt.
LISTING = ". .. .dockerignore .gitmodules Dockerfile app version.txt "
TAR_LISTING = ". .. .dockerignore Dockerfile version.txt "


def build(context: str, tmp_path: Path, registry: Registry, base: str, repo: str, *args: str,
          env: dict[str, str | None] | None = None, stdin: bytes | None = None) -> ExecutorRun:
    return run_executor_on(context, tmp_path / "root", "--destination",
                           f"{registry.host}/contexts/{repo}:1", "--insecure",
                           "--insecure-pull", "--build-arg", f"BASE={base}", *args, env=env,
                           stdin=stdin)


def built_image_prints(result: ExecutorRun, registry: Registry, repo: str, base: str,
                       tmp_path: Path) -> str:
    """Check the pushed image with skopeo (one layer on the base) and return what crun prints."""
    assert result.exit_code == 0, result.stderr
    ref = f"{registry.host}/contexts/{repo}:1"
    assert len(inspect_image(ref)["Layers"]) == len(inspect_image(base)["Layers"]) + 1
    run = run_image(ref, workdir=tmp_path / "run")
    assert run.exit_code == 0, run.stderr
    return run.stdout


def trusting(ca: TLSFiles) -> dict[str, str | None]:
    """The environment that makes kiln trust ``ca``, as a kaniko user sets it (a git-specific
    ``GIT_SSL_CAINFO`` would win over it, so this machine's is removed)."""
    return {"SSL_CERT_FILE": str(ca.ca), "GIT_SSL_CAINFO": None}


def assert_failed(result: ExecutorRun, line: str) -> None:
    assert result.exit_code == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.last_line == f"error building image: {line}"


def context_tarball(compress: str = "gzip", extra: dict[str, bytes] | None = None) -> bytes:
    """A context as a tarball: the app Dockerfile, version.txt, and an ignored secret."""
    files = {"Dockerfile": APP_DOCKERFILE.encode(), "version.txt": b"tarball\n",
             ".dockerignore": b"secret.txt\n", "secret.txt": b"secret\n", **(extra or {})}
    raw = tar_of(files)
    if compress == "gzip":
        import gzip

        return gzip.compress(raw)
    if compress == "zstd":
        return zstandard.ZstdCompressor().compress(raw)
    return raw


# --- git ------------------------------------------------------------------------------------

def test_git_protocol_context_by_branch(tmp_path: Path, registry: Registry, busybox_image: str,
                                        git_daemon: GitDaemon) -> None:
    result = build(f"{git_daemon.url}/app.git#refs/heads/feature", tmp_path, registry,
                   busybox_image, "git-branch", env={"GIT_PULL_METHOD": "git"})
    out = built_image_prints(result, registry, "git-branch", busybox_image, tmp_path)
    assert out.splitlines() == ["feature", LISTING]


def test_git_url_over_http_by_tag_as_kaniko_spells_it(
        tmp_path: Path, registry: Registry, busybox_image: str,
        context_http: ContextServer) -> None:
    # kaniko: git://HOST/PATH is fetched over $GIT_PULL_METHOD (https unless it says http).
    host = context_http.url.removeprefix("http://")
    result = build(f"git://{host}/git/app.git#refs/tags/v1", tmp_path, registry, busybox_image,
                   "git-tag", env={"GIT_PULL_METHOD": "http"})
    out = built_image_prints(result, registry, "git-tag", busybox_image, tmp_path)
    assert out.splitlines() == ["one", LISTING]


def test_https_git_context_by_commit_trusting_the_test_ca(
        tmp_path: Path, registry: Registry, busybox_image: str, context_https: ContextServer,
        git_repositories: GitRepositories, test_ca: TLSFiles) -> None:
    result = build(f"{context_https.url}/git/app.git#refs/heads/main#{git_repositories.first}",
                   tmp_path, registry, busybox_image, "git-commit", "--git",
                   "single-branch=true", env=trusting(test_ca))
    out = built_image_prints(result, registry, "git-commit", busybox_image, tmp_path)
    assert out.splitlines() == ["one", LISTING]


def test_git_context_sub_path_with_a_submodule(tmp_path: Path, registry: Registry,
                                               busybox_image: str,
                                               git_daemon: GitDaemon) -> None:
    result = build(f"{git_daemon.url}/app.git", tmp_path, registry, busybox_image, "git-sub",
                   "--context-sub-path", "app", "--git", "recurse-submodules=true",
                   env={"GIT_PULL_METHOD": "git"})
    out = built_image_prints(result, registry, "git-sub", busybox_image, tmp_path)
    assert out.splitlines() == ["hello from app/", "from the submodule"]


def test_git_credentials_come_from_the_environment(
        tmp_path: Path, registry: Registry, busybox_image: str,
        context_https_auth: ContextServer, test_ca: TLSFiles) -> None:
    result = build(f"{context_https_auth.url}/git/app.git", tmp_path, registry, busybox_image,
                   "git-auth", "--git", "branch=feature",
                   env={**trusting(test_ca), "GIT_USERNAME": GIT_USER,
                        "GIT_PASSWORD": GIT_PASSWORD})
    out = built_image_prints(result, registry, "git-auth", busybox_image, tmp_path)
    assert out.splitlines() == ["feature", LISTING]
    assert GIT_PASSWORD not in result.stderr + result.stdout


# --- tarballs ---------------------------------------------------------------------------------

def test_tarball_piped_into_stdin(tmp_path: Path, registry: Registry,
                                  busybox_image: str) -> None:
    result = build("tar://stdin", tmp_path, registry, busybox_image, "tar-stdin",
                   stdin=context_tarball("gzip"))
    out = built_image_prints(result, registry, "tar-stdin", busybox_image, tmp_path)
    assert out.splitlines() == ["tarball", TAR_LISTING]


def test_zstd_tarball_file(tmp_path: Path, registry: Registry, busybox_image: str) -> None:
    tarball = tmp_path / "context.tar.zst"
    tarball.write_bytes(context_tarball("zstd"))
    result = build(f"tar://{tarball}", tmp_path, registry, busybox_image, "tar-zstd")
    out = built_image_prints(result, registry, "tar-zstd", busybox_image, tmp_path)
    assert out.splitlines() == ["tarball", TAR_LISTING]


def test_https_tarball_and_dockerfile_url_trusting_the_test_ca(
        tmp_path: Path, registry: Registry, busybox_image: str, context_https: ContextServer,
        context_files: Path, test_ca: TLSFiles) -> None:
    (context_files / "https-context.tar.gz").write_bytes(context_tarball("gzip"))
    (context_files / "https.Dockerfile").write_text(APP_DOCKERFILE.replace(
        "cat /ctx/version.txt", "echo from the URL Dockerfile; cat /ctx/version.txt"))
    result = build(f"{context_https.url}/files/https-context.tar.gz", tmp_path, registry,
                   busybox_image, "tar-https", "--dockerfile",
                   f"{context_https.url}/files/https.Dockerfile",
                   env=trusting(test_ca))
    out = built_image_prints(result, registry, "tar-https", busybox_image, tmp_path)
    assert out.splitlines() == ["from the URL Dockerfile", "tarball", TAR_LISTING]


def test_s3_context_from_an_s3_compatible_store(tmp_path: Path, registry: Registry,
                                                busybox_image: str, moto_s3: MotoS3) -> None:
    client = moto_s3.client()
    client.create_bucket(Bucket="kiln-contexts")
    client.put_object(Bucket="kiln-contexts", Key="builds/ctx.tar.gz",
                      Body=context_tarball("gzip"))
    result = build("s3://kiln-contexts/builds/ctx.tar.gz", tmp_path, registry, busybox_image,
                   "s3", env={"S3_ENDPOINT": moto_s3.endpoint, "S3_FORCE_PATH_STYLE": "true",
                              "AWS_ACCESS_KEY_ID": moto_s3.ACCESS_KEY,
                              "AWS_SECRET_ACCESS_KEY": moto_s3.SECRET_KEY,
                              "AWS_REGION": "us-east-1"})
    out = built_image_prints(result, registry, "s3", busybox_image, tmp_path)
    assert out.splitlines() == ["tarball", TAR_LISTING]


def test_gs_context_through_the_storage_emulator_variable(
        tmp_path: Path, registry: Registry, busybox_image: str, context_http: ContextServer,
        context_files: Path) -> None:
    (context_files / "kiln-bucket" / "ctx").mkdir(parents=True)
    (context_files / "kiln-bucket" / "ctx" / "app.tar.gz").write_bytes(context_tarball())
    result = build("gs://kiln-bucket/ctx/app.tar.gz", tmp_path, registry, busybox_image, "gcs",
                   env={"STORAGE_EMULATOR_HOST": context_http.url})
    out = built_image_prints(result, registry, "gcs", busybox_image, tmp_path)
    assert out.splitlines() == ["tarball", TAR_LISTING]


# --- bad input --------------------------------------------------------------------------------

def test_unknown_context_scheme(tmp_path: Path, registry: Registry, busybox_image: str) -> None:
    result = build("ftp://example.com/ctx.tar.gz", tmp_path, registry, busybox_image, "bad")
    assert_failed(result, "--context ftp://example.com/ctx.tar.gz: unknown build context "
                          "prefix 'ftp://'; use a path or one of dir://, tar://, git://, "
                          "https://, http://, s3://, gs://")


def test_git_ref_that_does_not_exist(tmp_path: Path, registry: Registry, busybox_image: str,
                                     git_daemon: GitDaemon) -> None:
    context = f"{git_daemon.url}/app.git#refs/heads/nope"
    result = build(context, tmp_path, registry, busybox_image, "bad",
                   env={"GIT_PULL_METHOD": "git"})
    assert_failed(result, f"--context {context}: no branch or tag 'refs/heads/nope' in the "
                          "repository")


def test_git_commit_that_does_not_exist(tmp_path: Path, registry: Registry, busybox_image: str,
                                        git_daemon: GitDaemon) -> None:
    context = f"{git_daemon.url}/app.git#refs/heads/main#{'0' * 40}"
    result = build(context, tmp_path, registry, busybox_image, "bad",
                   env={"GIT_PULL_METHOD": "git"})
    assert_failed(result, f"--context {context}: commit {'0' * 40} is not in the repository")


def test_git_wrong_credentials(tmp_path: Path, registry: Registry, busybox_image: str,
                               context_https_auth: ContextServer, test_ca: TLSFiles) -> None:
    context = f"{context_https_auth.url}/git/app.git"
    result = build(context, tmp_path, registry, busybox_image, "bad",
                   env={**trusting(test_ca), "GIT_USERNAME": GIT_USER,
                        "GIT_PASSWORD": "wrong"})
    assert_failed(result, f"--context {context}: authentication failed (check GIT_USERNAME "
                          "and GIT_PASSWORD, or GIT_TOKEN)")


def test_tarball_entry_climbing_out_of_the_context(tmp_path: Path, registry: Registry,
                                                   busybox_image: str) -> None:
    kiln_dir = tmp_path / "kiln"
    result = build("tar://stdin", tmp_path, registry, busybox_image, "bad", "--kaniko-dir",
                   str(kiln_dir), stdin=context_tarball("gzip", {"../evil.txt": b"evil\n"}))
    assert_failed(result, '--context tar://stdin: entry "../evil.txt" escapes the root')
    assert not (kiln_dir / "evil.txt").exists()


def test_sub_path_that_does_not_exist(tmp_path: Path, registry: Registry, busybox_image: str,
                                      git_daemon: GitDaemon) -> None:
    context = f"{git_daemon.url}/app.git"
    result = build(context, tmp_path, registry, busybox_image, "bad", "--context-sub-path",
                   "nope", env={"GIT_PULL_METHOD": "git"})
    assert_failed(result, f"--context-sub-path nope: no such directory in {context}")


def test_sub_path_missing_from_a_local_directory(tmp_path: Path) -> None:
    (tmp_path / "ctx").mkdir()
    result = run_executor_on(str(tmp_path / "ctx"), tmp_path / "root", "--no-push",
                             "--context-sub-path", "nope")
    assert_failed(result, f"--context-sub-path nope: no such directory in {tmp_path / 'ctx'}")
