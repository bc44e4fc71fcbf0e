"""Pull, push and cross-repository mounts against real registries that want credentials.

Three CNCF distribution registries started by fixtures, all over HTTPS with a ``trustme`` CA:
htpasswd basic auth, mutual TLS (``http.tls.clientcas``) and a bearer-token realm whose JWTs
the test suite signs and the registry verifies. kiln reads the credentials the way kaniko does,
from ``config.json`` or a credential helper, and the CA from ``--registry-certificate``.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from executor.errors import RegistryError
from executor.image.model import OCI_CONFIG, OCI_MANIFEST, Descriptor, Manifest, Platform
from executor.image.reference import ImageRef
from executor.options import BuildOptions
from executor.publish import FinalImage, make_client, push_image
from executor.registry.auth import RegistryAuth
from executor.registry.client import PullSources, RegistryClient
from executor.registry.credentials import DockerConfig, Keychain
from executor.registry.transport import Transport, TransportOptions
from tests.conftest import (
    KILN_IDENTITY_TOKEN,
    KILN_PASSWORD,
    KILN_USER,
    READER_PASSWORD,
    READER_USER,
    SecureRegistry,
)
from tests.support.fault_proxy import Fault, FaultProxy
from tests.support.images import push_layout
from tests.support.kiln import run_executor, write_context
from tests.support.registry import Registry
from tests.support.token_issuer import TokenIssuer
from tests.unit.test_outputs import TinyImage, make_image, skopeo, skopeo_json

pytestmark = pytest.mark.e2e

KINDS = ["basic_registry", "mtls_registry", "token_registry"]


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def config_for(kind: str, host: str, user: str = KILN_USER,
               password: str = KILN_PASSWORD) -> dict[str, Any]:
    """The ``config.json`` a kaniko user would mount for this kind of registry."""
    if kind == "mtls_registry":
        return {}
    return {"auths": {host: {"auth": b64(f"{user}:{password}")}}}


def write_docker_config(directory: Path, data: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(data))
    return directory


def tls_flags(kind: str, secure: SecureRegistry) -> dict[str, Any]:
    host = secure.registry.host
    flags: dict[str, Any] = {"registry_certificates": {host: secure.tls.ca}}
    if kind == "mtls_registry":
        flags["registry_client_certs"] = {host: (secure.tls.client_cert, secure.tls.client_key)}
    return flags


def client_for(tmp_path: Path, kind: str, secure: SecureRegistry,
               config: dict[str, Any] | None = None, *, environ: dict[str, str] | None = None,
               **flags: Any) -> tuple[RegistryClient, Path]:
    """A client made by ``make_client``, as a build makes it, with this config.json."""
    config_dir = write_docker_config(tmp_path / "docker",
                                     config_for(kind, secure.registry.host)
                                     if config is None else config)
    options = BuildOptions(context=tmp_path, dockerfile=tmp_path / "Dockerfile",
                           **{**tls_flags(kind, secure), **flags})
    keychain = Keychain(DockerConfig.load(config_dir / "config.json"), environ=environ,
                        google=lambda: None)
    return make_client(options, keychain), config_dir / "config.json"


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def secure(kind: str, request: pytest.FixtureRequest) -> SecureRegistry:
    value: SecureRegistry = request.getfixturevalue(kind)
    return value


@pytest.fixture
def image(tmp_path: Path, request: pytest.FixtureRequest) -> TinyImage:
    return make_image(tmp_path / "blobs", {"etc/motd": request.node.name.encode()})


def push_tiny(client: RegistryClient, ref: ImageRef, image: TinyImage) -> str:
    for layer in image.layers:
        client.push_blob(ref, layer.descriptor(), layer.path)
    config = Descriptor(OCI_CONFIG, image.config_digest, len(image.config_bytes))
    client.push_blob_bytes(ref, config, image.config_bytes)
    return client.push_manifest(ref, image.manifest_bytes, OCI_MANIFEST)


def record(client: RegistryClient) -> list[tuple[str, str, int]]:
    """Every response the client's sessions receive, as (method, path, status)."""
    seen: list[tuple[str, str, int]] = []

    def hook(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        seen.append((response.request.method or "", response.request.path_url,
                     response.status_code))

    original = client.transport.session_for

    def session_for(registry: str) -> requests.Session:
        session = original(registry)
        if hook not in session.hooks["response"]:
            session.hooks["response"].append(hook)
        return session

    client.transport.session_for = session_for  # type: ignore[method-assign]
    return seen


# --- pull, push and mount on each kind of registry ---------------------------------------------


def test_the_base_image_is_pulled_with_the_registrys_credentials(
        tmp_path: Path, kind: str, secure: SecureRegistry) -> None:
    client, _ = client_for(tmp_path, kind, secure)
    with client:
        base = ImageRef.parse(secure.base)
        resolved = client.resolve(base, Platform())
        layer = resolved.manifest.layers[0]
        client.fetch_blob(base, layer, tmp_path / "layer")
    assert (tmp_path / "layer").stat().st_size == layer.size


def test_a_pushed_image_is_read_back_by_skopeo(tmp_path: Path, kind: str,
                                                secure: SecureRegistry, image: TinyImage) -> None:
    client, _ = client_for(tmp_path, kind, secure)
    ref = ImageRef.parse(f"{secure.registry.host}/pushed/{kind}:1")
    with client:
        client.check_push_permission(ref)
        digest = push_tiny(client, ref, image)
    info = skopeo_json("inspect", *secure.skopeo_args, f"docker://{ref}")
    assert info["Digest"] == digest
    source_args = [arg.replace("--", "--src-", 1) for arg in secure.skopeo_args]
    skopeo("copy", *source_args, f"docker://{ref}", f"oci:{tmp_path / 'copy'}:x")


def test_a_base_layer_is_mounted_across_repositories_not_uploaded(
        tmp_path: Path, kind: str, secure: SecureRegistry) -> None:
    client, _ = client_for(tmp_path, kind, secure)
    base = ImageRef.parse(secure.base)
    dest = ImageRef.parse(f"{secure.registry.host}/mounted/{kind}-{os.getpid()}:1")
    with client:
        layer = client.resolve(base, Platform()).manifest.layers[0]
        client.fetch_blob(base, layer, tmp_path / "layer")
        seen = record(client)
        assert client.push_blob(dest, layer, tmp_path / "layer", mount_from=base) is True
    mounts = [entry for entry in seen if entry[0] == "POST" and "mount=" in entry[1]]
    assert [status for _, _, status in mounts][-1] == 201
    assert not any(method in ("PUT", "PATCH") for method, _, _ in seen)


# --- refusals: one line naming registry, repository, operation, status and what to check ------


def test_a_wrong_password_names_the_registry_and_the_config_file(
        tmp_path: Path, basic_registry: SecureRegistry) -> None:
    host = basic_registry.registry.host
    client, config = client_for(tmp_path, "basic_registry", basic_registry,
                                config_for("basic_registry", host, password="wrong"))
    with client, pytest.raises(RegistryError) as info:
        client.resolve(ImageRef.parse(basic_registry.base), Platform())
    assert str(info.value) == (f"pulling manifest {host}/test/busybox:latest: 401 Unauthorized: "
                               f"check the credentials for {host} in {config}")


def test_no_credentials_says_where_they_were_looked_for(
        tmp_path: Path, basic_registry: SecureRegistry) -> None:
    host = basic_registry.registry.host
    client, config = client_for(tmp_path, "basic_registry", basic_registry, {})
    with client, pytest.raises(RegistryError) as info:
        client.check_push_permission(ImageRef.parse(f"{host}/app"))
    assert str(info.value) == (f"pushing to {host}/app: 401 Unauthorized: "
                               f"no credentials for {host} in {config}")


def test_a_wrong_password_at_the_token_server_says_which_server_refused(
        tmp_path: Path, token_registry: SecureRegistry, token_issuer: TokenIssuer) -> None:
    host = token_registry.registry.host
    client, config = client_for(tmp_path, "token_registry", token_registry,
                                config_for("token_registry", host, password="wrong"))
    with client, pytest.raises(RegistryError) as info:
        client.check_push_permission(ImageRef.parse(f"{host}/app"))
    assert str(info.value) == (
        f"pushing to {host}/app: 401 Unauthorized: the token server {token_issuer.realm} "
        f"answered 401 Unauthorized: check the credentials for {host} in {config}")


def test_a_token_without_the_push_scope_names_the_user_and_the_repository(
        tmp_path: Path, token_registry: SecureRegistry) -> None:
    host = token_registry.registry.host
    client, config = client_for(tmp_path, "token_registry", token_registry,
                                config_for("token_registry", host, READER_USER, READER_PASSWORD))
    with client:
        client.resolve(ImageRef.parse(token_registry.base), Platform())  # pull is allowed
        with pytest.raises(RegistryError) as info:
            client.check_push_permission(ImageRef.parse(f"{host}/app"))
    assert str(info.value) == (f"pushing to {host}/app: 401 Unauthorized: user reader from "
                               f"{config} may not push to app")


def test_an_unknown_ca_is_refused_before_any_credential_is_sent(
        tmp_path: Path, basic_registry: SecureRegistry) -> None:
    host = basic_registry.registry.host
    client, _ = client_for(tmp_path, "basic_registry", basic_registry,
                           registry_certificates={})
    with client, pytest.raises(RegistryError) as info:
        client.resolve(ImageRef.parse(basic_registry.base), Platform())
    assert str(info.value) == (f"cannot reach registry {host}: TLS certificate verification "
                               "failed: unable to get local issuer certificate")


def test_mtls_without_a_client_certificate_is_refused(
        tmp_path: Path, mtls_registry: SecureRegistry) -> None:
    host = mtls_registry.registry.host
    client, _ = client_for(tmp_path, "mtls_registry", mtls_registry, registry_client_certs={})
    with client, pytest.raises(RegistryError) as info:
        client.resolve(ImageRef.parse(mtls_registry.base), Platform())
    assert str(info.value).startswith(f"cannot reach registry {host}: ")


def test_ssl_cert_dir_is_trusted_without_rehash_links(
        tmp_path: Path, basic_registry: SecureRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    cert_dir = tmp_path / "certs"
    cert_dir.mkdir()
    (cert_dir / "ca-certificates.crt").write_bytes(basic_registry.tls.ca.read_bytes())
    monkeypatch.setenv("SSL_CERT_DIR", str(cert_dir))
    client, _ = client_for(tmp_path, "basic_registry", basic_registry, registry_certificates={})
    with client:
        client.resolve(ImageRef.parse(basic_registry.base), Platform())


# --- where credentials come from -------------------------------------------------------------


def write_helper(directory: Path, name: str, user: str, password: str) -> Path:
    """A credential helper speaking the docker-credential-helpers protocol."""
    directory.mkdir(parents=True, exist_ok=True)
    helper = directory / f"docker-credential-{name}"
    helper.write_text(
        "#!/bin/sh\n"
        '[ "$1" = get ] || exit 1\n'
        "read server\n"
        f'printf \'{{"ServerURL":"%s","Username":"{user}","Secret":"{password}"}}\' "$server"\n')
    helper.chmod(helper.stat().st_mode | stat.S_IXUSR)
    return helper


def test_cred_helpers_supply_the_password(tmp_path: Path,
                                          basic_registry: SecureRegistry) -> None:
    host = basic_registry.registry.host
    bin_dir = tmp_path / "bin"
    write_helper(bin_dir, "kilntest", KILN_USER, KILN_PASSWORD)
    environ = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    client, _ = client_for(tmp_path, "basic_registry", basic_registry,
                           {"credHelpers": {host: "kilntest"}}, environ=environ)
    with client:
        client.resolve(ImageRef.parse(basic_registry.base), Platform())


def test_an_identity_token_is_exchanged_at_the_realm(
        tmp_path: Path, token_registry: SecureRegistry, token_issuer: TokenIssuer) -> None:
    host = token_registry.registry.host
    client, _ = client_for(tmp_path, "token_registry", token_registry,
                           {"auths": {host: {"identitytoken": KILN_IDENTITY_TOKEN}}})
    before = len(token_issuer.requests)
    with client:
        client.check_push_permission(ImageRef.parse(f"{host}/idtoken"))
    assert ("POST", KILN_USER, ("repository:idtoken:pull,push",)) in \
        token_issuer.requests[before:]


def test_a_registry_token_is_sent_as_it_is(
        tmp_path: Path, token_registry: SecureRegistry, token_issuer: TokenIssuer) -> None:
    host = token_registry.registry.host
    token = token_issuer.token_for(KILN_USER, "repository:test/busybox:pull")
    client, _ = client_for(tmp_path, "token_registry", token_registry,
                           {"auths": {host: {"registrytoken": token}}})
    before = len(token_issuer.requests)
    with client:
        client.resolve(ImageRef.parse(token_registry.base), Platform())
    assert token_issuer.requests[before:] == []


def test_a_token_is_reused_until_it_expires(
        tmp_path: Path, token_registry: SecureRegistry, token_issuer: TokenIssuer) -> None:
    host = token_registry.registry.host
    now = [1000.0]
    transport = Transport(TransportOptions(registry_certificates={host: token_registry.tls.ca}))
    keychain = Keychain(DockerConfig.load(write_docker_config(
        tmp_path, config_for("token_registry", host)) / "config.json"))
    client = RegistryClient(transport=transport,
                            auth=RegistryAuth(keychain, transport, clock=lambda: now[0]))
    base = ImageRef.parse(token_registry.base)
    before = len(token_issuer.requests)
    with client:
        layer = client.resolve(base, Platform()).manifest.layers[0]
        client.fetch_blob(base, layer, tmp_path / "a")
        client.resolve(base, Platform())
        assert len(token_issuer.requests) - before == 1
        now[0] += token_issuer.expires_in  # past the token's lifetime
        client.resolve(base, Platform())
    assert len(token_issuer.requests) - before == 2


def test_no_secret_reaches_the_log_even_at_debug(
        tmp_path: Path, kind: str, secure: SecureRegistry, image: TinyImage,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client, _ = client_for(tmp_path, kind, secure)
    with client:
        push_tiny(client, ImageRef.parse(f"{secure.registry.host}/quiet/{kind}:1"), image)
    text = "\n".join(f"{r.getMessage()} {r.args}" for r in caplog.records)
    assert KILN_PASSWORD not in text
    assert b64(f"{KILN_USER}:{KILN_PASSWORD}") not in text
    assert not re.search(r"eyJ[\w-]+\.eyJ", text)  # no JWT


# --- faults ----------------------------------------------------------------------------------


@pytest.fixture
def proxy(registry: Registry) -> Iterator[FaultProxy]:
    fault_proxy = FaultProxy(registry.url).start()
    try:
        yield fault_proxy
    finally:
        fault_proxy.stop()


def plain_client(host: str, sleeps: list[float]) -> RegistryClient:
    return RegistryClient(transport=Transport(
        TransportOptions(insecure_registries=frozenset({host})), sleep=sleeps.append))


def test_a_500_then_success_is_retried(proxy: FaultProxy, image: TinyImage) -> None:
    proxy.faults.append(Fault("PUT", r"/blobs/uploads/", 500))
    sleeps: list[float] = []
    ref = ImageRef.parse(f"{proxy.host}/faults/five-hundred:1")
    with plain_client(proxy.host, sleeps) as client:
        push_tiny(client, ref, image)
    statuses = [status for method, path, status in proxy.seen
                if method == "PUT" and "/blobs/uploads/" in path]
    assert statuses[:2] == [500, 201]
    assert len(sleeps) == 1


def test_a_429_waits_as_long_as_retry_after_says(proxy: FaultProxy, image: TinyImage) -> None:
    proxy.faults.append(Fault("PUT", r"/manifests/", 429, {"Retry-After": "2"}))
    sleeps: list[float] = []
    ref = ImageRef.parse(f"{proxy.host}/faults/too-many:1")
    with plain_client(proxy.host, sleeps) as client:
        push_tiny(client, ref, image)
    assert sleeps == [2.0]
    assert [s for m, p, s in proxy.seen if m == "PUT" and "/manifests/" in p] == [429, 201]


def test_a_registry_killed_mid_push_leaves_no_tag_and_a_rerun_succeeds(
        tmp_path: Path, image: TinyImage) -> None:
    reg = Registry(tmp_path / "dying").start()
    try:
        ref = ImageRef.parse(f"{reg.host}/faults/killed:1")
        sleeps: list[float] = []
        client = plain_client(reg.host, sleeps)
        send = client.transport.session.request

        def kill_on_upload(method: str, url: str, **kwargs: Any) -> requests.Response:
            if method == "PUT" and "/blobs/uploads/" in url:
                reg.kill()
            return send(method, url, **kwargs)

        client.transport.session.request = kill_on_upload  # type: ignore[method-assign,assignment]
        with client, pytest.raises(RegistryError) as info:
            push_tiny(client, ref, image)
        assert str(info.value) == f"cannot reach registry {reg.host}: connection refused"
        reg.start()
        assert reg.tags("faults/killed") == []
        with plain_client(reg.host, sleeps) as again:
            digest = push_tiny(again, ref, image)
        assert skopeo_json("inspect", "--tls-verify=false", f"docker://{ref}")["Digest"] == digest
    finally:
        reg.stop()


# --- the executor command, end to end --------------------------------------------------------


def executor_flags(kind: str, secure: SecureRegistry) -> list[str]:
    host = secure.registry.host
    flags = ["--registry-certificate", f"{host}={secure.tls.ca}"]
    if kind == "mtls_registry":
        flags += ["--registry-client-cert",
                  f"{host}={secure.tls.client_cert},{secure.tls.client_key}"]
    return flags


def run_with_config(tmp_path: Path, config: dict[str, Any], *args: str,
                    dockerfile: str, env: dict[str, str] | None = None) -> Any:
    config_dir = write_docker_config(tmp_path / "docker", config)
    context = write_context(tmp_path / "context", dockerfile, {"app.txt": "kiln\n"})
    old = dict(os.environ)
    os.environ.update({"DOCKER_CONFIG": str(config_dir), **(env or {})})
    try:
        return run_executor(context, tmp_path / "root", *args)
    finally:
        os.environ.clear()
        os.environ.update(old)


def test_a_build_pulls_from_and_pushes_to_a_secured_registry(
        tmp_path: Path, kind: str, secure: SecureRegistry) -> None:
    host = secure.registry.host
    dest = f"{host}/built/{kind}:1"
    result = run_with_config(
        tmp_path, config_for(kind, host), "--destination", dest, *executor_flags(kind, secure),
        "--digest-file", str(tmp_path / "digest"), "--verbosity", "trace",
        dockerfile=f"FROM {secure.base}\nCOPY app.txt /app.txt\n")
    assert result.exit_code == 0, result.stderr
    info = skopeo_json("inspect", *secure.skopeo_args, f"docker://{dest}")
    assert info["Digest"] == (tmp_path / "digest").read_text()
    for secret in (KILN_PASSWORD, b64(f"{KILN_USER}:{KILN_PASSWORD}")):
        assert secret not in result.stderr + result.stdout
    assert not re.search(r"eyJ[\w-]+\.eyJ", result.stderr)


def test_a_build_with_a_wrong_password_fails_before_building(
        tmp_path: Path, basic_registry: SecureRegistry) -> None:
    host = basic_registry.registry.host
    result = run_with_config(
        tmp_path, config_for("basic_registry", host, password="wrong"),
        "--destination", f"{host}/app:1", *executor_flags("basic_registry", basic_registry),
        dockerfile="FROM scratch\nCOPY app.txt /\n")
    assert result.exit_code == 1
    assert result.last_line == (
        f"error building image: pushing to {host}/app: 401 Unauthorized: check the credentials "
        f"for {host} in {tmp_path / 'docker' / 'config.json'}")
    assert "Taking snapshot" not in result.stderr


def test_skip_push_permission_check_defers_the_refusal_to_the_push(
        tmp_path: Path, basic_registry: SecureRegistry) -> None:
    host = basic_registry.registry.host
    result = run_with_config(
        tmp_path, config_for("basic_registry", host, password="wrong"),
        "--destination", f"{host}/app:1", "--skip-push-permission-check",
        *executor_flags("basic_registry", basic_registry),
        dockerfile="FROM scratch\nCOPY app.txt /\n")
    assert result.exit_code == 1
    assert re.fullmatch(rf"error building image: checking blob {re.escape(host)}/app@sha256:"
                        r"[0-9a-f]{64}: 401 Unauthorized: check the credentials for .*",
                        result.last_line), result.last_line


def test_a_build_with_an_unknown_ca_fails_with_one_line(
        tmp_path: Path, basic_registry: SecureRegistry) -> None:
    host = basic_registry.registry.host
    result = run_with_config(
        tmp_path, config_for("basic_registry", host), "--destination", f"{host}/app:1",
        dockerfile=f"FROM {basic_registry.base}\n")
    assert result.exit_code == 1
    assert result.last_line == (f"error building image: cannot reach registry {host}: TLS "
                                "certificate verification failed: unable to get local issuer "
                                "certificate")


def test_a_build_with_a_pull_only_token_fails_naming_the_scope(
        tmp_path: Path, token_registry: SecureRegistry) -> None:
    host = token_registry.registry.host
    result = run_with_config(
        tmp_path, config_for("token_registry", host, READER_USER, READER_PASSWORD),
        "--destination", f"{host}/app:1", *executor_flags("token_registry", token_registry),
        dockerfile=f"FROM {token_registry.base}\n")
    assert result.exit_code == 1
    assert result.last_line == (
        f"error building image: pushing to {host}/app: 401 Unauthorized: user reader from "
        f"{tmp_path / 'docker' / 'config.json'} may not push to app")


def test_a_build_uses_a_credential_helper_on_path(
        tmp_path: Path, basic_registry: SecureRegistry) -> None:
    host = basic_registry.registry.host
    bin_dir = tmp_path / "bin"
    write_helper(bin_dir, "kilntest", KILN_USER, KILN_PASSWORD)
    dest = f"{host}/helped/app:1"
    result = run_with_config(
        tmp_path, {"credHelpers": {host: "kilntest"}}, "--destination", dest,
        *executor_flags("basic_registry", basic_registry),
        dockerfile=f"FROM {basic_registry.base}\nCOPY app.txt /\n",
        env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    assert result.exit_code == 0, result.stderr
    skopeo("inspect", *basic_registry.skopeo_args, f"docker://{dest}")


# --- mirrors, retries, immutable tags ----------------------------------------------------------


def final_image(image: TinyImage) -> FinalImage:
    manifest = Manifest.from_bytes(image.manifest_bytes, OCI_MANIFEST)
    return FinalImage(manifest, image.manifest_bytes, image.config_bytes, tuple(image.layers))


def mapped_client(origin: str, mirrors: tuple[str, ...], *insecure: str, skip: bool = False,
                  retries: int = 0, sleeps: list[float] | None = None) -> RegistryClient:
    transport = Transport(TransportOptions(insecure_registries=frozenset(insecure)),
                          sleep=(sleeps if sleeps is not None else []).append)
    return RegistryClient(transport=transport,
                          pull_sources=PullSources({origin: mirrors}, skip, retries))


def test_a_mapped_registry_serves_the_manifest_and_the_blobs(
        tmp_path: Path, registry: Registry, busybox_image: str) -> None:
    origin = ImageRef.parse("origin.invalid/test/busybox:latest")
    with mapped_client("origin.invalid", (registry.host,), registry.host) as client:
        resolved = client.resolve(origin, Platform())
        layer = resolved.manifest.layers[0]
        client.fetch_blob(origin, layer, tmp_path / "layer")
    assert resolved.ref.registry == registry.host
    assert (tmp_path / "layer").stat().st_size == layer.size


def test_a_mirror_without_the_image_falls_back_to_the_registry(
        registry: Registry, busybox_image: str) -> None:
    base = ImageRef.parse(busybox_image)
    with mapped_client(registry.host, (f"{registry.host}/no-such-mirror",),
                       registry.host) as client:
        assert client.resolve(base, Platform()).ref == base


def test_skip_default_registry_fallback_fails_when_no_mirror_has_the_image(
        registry: Registry, busybox_image: str) -> None:
    base = ImageRef.parse(busybox_image)
    with mapped_client(registry.host, (f"{registry.host}/no-such-mirror",), registry.host,
                       skip=True) as client, pytest.raises(RegistryError) as info:
        client.resolve(base, Platform())
    assert str(info.value) == (f"pulling {base}: image not found on any configured mapped "
                               "registry (--skip-default-registry-fallback)")


def test_image_download_retry_starts_a_failed_pull_again(proxy: FaultProxy,
                                                          busybox_image: str) -> None:
    # Four 503s exhaust the transport's own three retries; one more round succeeds.
    proxy.faults.append(Fault("GET", r"/manifests/", 503, times=4))
    base = ImageRef.parse(f"{proxy.host}/{ImageRef.parse(busybox_image).repository}:latest")
    sleeps: list[float] = []
    with mapped_client("none", (), proxy.host, retries=1, sleeps=sleeps) as client:
        client.resolve(base, Platform())
    assert sleeps[-1] == 1.0 and len(sleeps) == 4


def test_push_retry_starts_a_failed_push_again(proxy: FaultProxy, image: TinyImage) -> None:
    proxy.faults.append(Fault("PUT", r"/manifests/", 500, times=4))
    ref = ImageRef.parse(f"{proxy.host}/faults/push-retry:1")
    sleeps: list[float] = []
    with plain_client(proxy.host, sleeps) as client:
        push_image(client, ref, final_image(image), None, retries=1)
    assert [s for m, p, s in proxy.seen if m == "PUT" and "/manifests/" in p] == [500] * 4 + [201]
    assert sleeps[3] == 1.0


IMMUTABLE = json.dumps({"errors": [{"code": "TAG_INVALID", "message": "The image tag '1' "
                        "already exists in the 'app' repository and cannot be overwritten "
                        "because the repository is immutable."}]}).encode()


def test_an_immutable_tag_error_fails_the_push_unless_ignored(proxy: FaultProxy,
                                                               image: TinyImage) -> None:
    proxy.faults.append(Fault("PUT", r"/manifests/", 400, body=IMMUTABLE, times=2))
    ref = ImageRef.parse(f"{proxy.host}/faults/immutable:1")
    with plain_client(proxy.host, []) as client:
        with pytest.raises(RegistryError, match="TAG_INVALID"):
            push_image(client, ref, final_image(image), None, retries=3)
        push_image(client, ref, final_image(image), None, ignore_immutable_tag=True)
    assert [s for m, p, s in proxy.seen if m == "PUT" and "/manifests/" in p] == [400, 400]


def test_a_build_pulls_docker_hub_images_from_a_registry_mirror(
        tmp_path: Path, registry: Registry, busybox_layout: Path) -> None:
    push_layout(busybox_layout, "latest", f"{registry.host}/hub-mirror/library/busybox:latest")
    context = write_context(tmp_path / "context", "FROM busybox\nCOPY app.txt /\n",
                            {"app.txt": "kiln\n"})
    dest = f"{registry.host}/mirrored/app:1"
    result = run_executor(context, tmp_path / "root", "--destination", dest,
                          "--registry-mirror", f"{registry.host}/hub-mirror",
                          "--skip-default-registry-fallback", "--insecure", "--insecure-pull")
    assert result.exit_code == 0, result.stderr
    assert f"Retrieving image {registry.host}/hub-mirror/library/busybox:latest" in result.stderr
    assert registry.tags("mirrored/app") == ["1"]
