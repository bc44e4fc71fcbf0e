"""Fixtures on real parts: a CNCF distribution registry, base images made here, crun."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from executor.pid1 import spawn_by_fork
from tests.support.registry import Registry

# Tests start processes from several threads at once (the conformance pool): with vfork, CI saw
# exec fail with EFAULT twice (see spawn_by_fork).
spawn_by_fork()


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A plain-HTTP registry on a free loopback port, for the whole test session."""
    reg = Registry(tmp_path_factory.mktemp("registry")).start()
    try:
        yield reg
    finally:
        reg.stop()


# --- base images and runtimes (tests/support/images.py, runtime.py, containerd.py) ---------
# Imported here, not at the top, so this block can be appended without touching the lines above.
from tests.support.containerd import Containerd  # noqa: E402
from tests.support.images import (  # noqa: E402
    push_layout,
    write_busybox_layout,
    write_debian_layout,
)


@pytest.fixture(scope="session")
def busybox_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An OCI image layout holding the one-layer busybox image as tag ``latest``."""
    layout = tmp_path_factory.mktemp("busybox-layout") / "layout"
    write_busybox_layout(layout, "latest")
    return layout


@pytest.fixture(scope="session")
def busybox_image(registry: Registry, busybox_layout: Path) -> str:
    """``127.0.0.1:PORT/test/busybox:latest``: busybox-static, OCI media types, about 1 MB."""
    return push_layout(busybox_layout, "latest", f"{registry.host}/test/busybox:latest")


@pytest.fixture(scope="session")
def busybox_docker_image(registry: Registry, busybox_layout: Path) -> str:
    """The busybox image with Docker media types (schema 2): ``.../test/busybox-docker:latest``."""
    return push_layout(
        busybox_layout, "latest", f"{registry.host}/test/busybox-docker:latest", format="v2s2"
    )


@pytest.fixture(scope="session")
def debian_image(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> str:
    """``127.0.0.1:PORT/test/debian:bookworm``: debootstrap minbase, one layer, about 117 MB.

    The first session on a machine runs debootstrap (about 40 s); later ones reuse the layer
    cached under /var/cache/kiln-tests.
    """
    layout = tmp_path_factory.mktemp("debian-layout") / "layout"
    write_debian_layout(layout, "bookworm")
    return push_layout(layout, "bookworm", f"{registry.host}/test/debian:bookworm")


@pytest.fixture(scope="session")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:
    """A private containerd 1.6 daemon for the session: ``containerd.pull_and_run(ref, args)``."""
    with Containerd(tmp_path_factory.mktemp("containerd")) as daemon:
        yield daemon


# --- secured registries: basic auth over TLS, mTLS, a bearer-token realm (issue 6) -----------
from dataclasses import dataclass  # noqa: E402

from tests.support.registry import TLSFiles, write_htpasswd, write_tls_files  # noqa: E402
from tests.support.token_issuer import TokenIssuer  # noqa: E402

#: The user every secured registry knows, and the one the token issuer lets only pull.
KILN_USER, KILN_PASSWORD = "kiln", "kiln-Secret-Pa55"
READER_USER, READER_PASSWORD = "reader", "reader-Secret-Pa55"
KILN_IDENTITY_TOKEN = "kiln-refresh-token-0123456789"


@dataclass(frozen=True)
class SecureRegistry:
    """A running secured registry, the busybox base in it, and how skopeo gets in."""

    registry: Registry
    tls: TLSFiles
    base: str
    #: Arguments that let ``skopeo inspect`` / ``copy`` (source side) read from it.
    skopeo_args: tuple[str, ...]


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    """A trustme CA for the secured registries, with server and client certificates."""
    return write_tls_files(tmp_path_factory.mktemp("test-ca"))


def _start_secure(workdir: Path, tls: TLSFiles, busybox_layout: Path, skopeo_args: list[str],
                  **registry_args: object) -> SecureRegistry:
    from tests.support.runtime import require_tool

    require_tool("skopeo", "skopeo")
    reg = Registry(workdir, scheme="https", tls_cert=tls.cert, tls_key=tls.key,
                   **registry_args).start()  # type: ignore[arg-type]
    base = f"{reg.host}/test/busybox:latest"
    dest_args = [a.replace("--creds", "--dest-creds").replace("--cert-dir", "--dest-cert-dir")
                 for a in skopeo_args]
    import subprocess

    proc = subprocess.run(["skopeo", "copy", "--quiet", *dest_args, f"oci:{busybox_layout}:latest",
                           f"docker://{base}"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        reg.stop()
        raise RuntimeError(f"seeding {base} failed: {proc.stderr}")
    return SecureRegistry(reg, tls, base, tuple(skopeo_args))


@pytest.fixture(scope="session")
def basic_registry(tmp_path_factory: pytest.TempPathFactory, test_ca: TLSFiles,
                   busybox_layout: Path) -> Iterator[SecureRegistry]:
    """HTTPS with the test CA and htpasswd basic auth (user ``kiln``)."""
    workdir = tmp_path_factory.mktemp("basic-registry")
    htpasswd = write_htpasswd(workdir / "htpasswd", {KILN_USER: KILN_PASSWORD})
    secure = _start_secure(workdir, test_ca, busybox_layout,
                           [f"--cert-dir={test_ca.cert_dir}",
                            f"--creds={KILN_USER}:{KILN_PASSWORD}"], htpasswd=htpasswd)
    try:
        yield secure
    finally:
        secure.registry.stop()


@pytest.fixture(scope="session")
def mtls_registry(tmp_path_factory: pytest.TempPathFactory, test_ca: TLSFiles,
                  busybox_layout: Path) -> Iterator[SecureRegistry]:
    """HTTPS that requires a client certificate issued by the test CA."""
    workdir = tmp_path_factory.mktemp("mtls-registry")
    secure = _start_secure(workdir, test_ca, busybox_layout, [f"--cert-dir={test_ca.cert_dir}"],
                           client_cas=test_ca.ca,
                           client_cert=(test_ca.client_cert, test_ca.client_key))
    try:
        yield secure
    finally:
        secure.registry.stop()


@pytest.fixture(scope="session")
def token_issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenIssuer]:
    """A JWT token server: ``kiln`` may pull and push anything, ``reader`` only pull."""
    issuer = TokenIssuer(tmp_path_factory.mktemp("token-issuer"),
                         users={KILN_USER: (KILN_PASSWORD, {"*": "pull,push"}),
                                READER_USER: (READER_PASSWORD, {"*": "pull"})},
                         refresh_tokens={KILN_IDENTITY_TOKEN: KILN_USER}).start()
    try:
        yield issuer
    finally:
        issuer.stop()


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory, test_ca: TLSFiles,
                   busybox_layout: Path, token_issuer: TokenIssuer) -> Iterator[SecureRegistry]:
    """HTTPS with the registry's ``auth.token`` section trusting ``token_issuer``."""
    workdir = tmp_path_factory.mktemp("token-registry")
    secure = _start_secure(workdir, test_ca, busybox_layout,
                           [f"--cert-dir={test_ca.cert_dir}",
                            f"--creds={KILN_USER}:{KILN_PASSWORD}"],
                           extra_config=token_issuer.registry_config())
    try:
        yield secure
    finally:
        secure.registry.stop()


# --- remote build contexts: git daemon, git http-backend, HTTPS files, S3 (issue 8) -----------
from tests.support.context_servers import (  # noqa: E402
    ContextServer,
    GitDaemon,
    GitRepositories,
    MotoS3,
    write_test_repositories,
)

GIT_USER, GIT_PASSWORD = "kiln-git", "kiln-git-Pa55"


@pytest.fixture(scope="session")
def git_repositories(tmp_path_factory: pytest.TempPathFactory) -> GitRepositories:
    """Bare ``app.git`` (branches main and feature, tag v1, submodule) and ``lib.git``."""
    return write_test_repositories(tmp_path_factory.mktemp("git-repositories"))


@pytest.fixture(scope="session")
def git_daemon(git_repositories: GitRepositories) -> Iterator[GitDaemon]:
    """``git daemon`` serving the test repositories: ``{git_daemon.url}/app.git``."""
    with GitDaemon(git_repositories.root) as daemon:
        yield daemon


@pytest.fixture(scope="session")
def context_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory the context servers serve under ``/files/`` (tests drop tarballs here)."""
    return tmp_path_factory.mktemp("context-files")


@pytest.fixture(scope="session")
def context_http(context_files: Path, git_repositories: GitRepositories
                 ) -> Iterator[ContextServer]:
    """Plain HTTP: ``/files/``, ``/git/app.git`` (git http-backend), the GCS download path."""
    with ContextServer(context_files, git_repositories.root) as server:
        yield server


@pytest.fixture(scope="session")
def context_https(context_files: Path, git_repositories: GitRepositories,
                  test_ca: TLSFiles) -> Iterator[ContextServer]:
    """The same over HTTPS with a certificate from ``test_ca``."""
    with ContextServer(context_files, git_repositories.root, tls=test_ca) as server:
        yield server


@pytest.fixture(scope="session")
def context_https_auth(context_files: Path, git_repositories: GitRepositories,
                       test_ca: TLSFiles) -> Iterator[ContextServer]:
    """HTTPS that asks for basic auth as ``GIT_USER`` / ``GIT_PASSWORD``."""
    with ContextServer(context_files, git_repositories.root, tls=test_ca,
                       credentials=(GIT_USER, GIT_PASSWORD)) as server:
        yield server


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    """moto's S3 server on loopback (``python -m moto.server``)."""
    with MotoS3() as server:
        yield server
