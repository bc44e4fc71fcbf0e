"""Credentials and auth choices that need no registry: config.json rules, helpers, challenges,
scopes, token reuse, google-auth selection, TLS flag parsing."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from executor.errors import OptionsError, RegistryError
from executor.options import parse_client_certs
from executor.registry.auth import Challenge, scopes_for
from executor.registry.client import Scope
from executor.registry.credentials import (
    Credential,
    DockerConfig,
    Keychain,
    docker_config_path,
    is_google_registry,
    registry_host,
)


def write_config(directory: Path, data: dict[str, object]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.json"
    path.write_text(json.dumps(data))
    return path


def keychain(tmp_path: Path, data: dict[str, object], **kwargs: object) -> Keychain:
    return Keychain(DockerConfig.load(write_config(tmp_path, data)), **kwargs)  # type: ignore[arg-type]


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# --- config.json ---------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "host"), [
    ("reg.example.com", "reg.example.com"),
    ("https://reg.example.com", "reg.example.com"),
    ("http://reg.example.com:5000/v2/", "reg.example.com:5000"),
    ("https://index.docker.io/v1/", "docker.io"),
    ("index.docker.io", "docker.io"),
    ("registry-1.docker.io", "docker.io"),
    ("docker.io", "docker.io"),
])
def test_a_config_key_names_a_registry_the_way_docker_reads_it(key: str, host: str) -> None:
    assert registry_host(key) == host


def test_docker_config_defaults_to_the_kaniko_directory() -> None:
    assert docker_config_path({}) == Path("/kaniko/.docker/config.json")


def test_docker_config_may_name_a_directory_or_the_file_itself(tmp_path: Path) -> None:
    path = write_config(tmp_path, {})
    assert docker_config_path({"DOCKER_CONFIG": str(tmp_path)}) == path
    assert docker_config_path({"DOCKER_CONFIG": str(path)}) == path


def test_a_missing_config_means_anonymous(tmp_path: Path) -> None:
    chain = Keychain(DockerConfig.load(tmp_path / "absent.json"), google=lambda: None)
    assert chain.resolve("reg.example.com") is None


def test_auth_is_base64_of_user_and_password(tmp_path: Path) -> None:
    chain = keychain(tmp_path, {"auths": {"reg.example.com": {"auth": b64("u:p:with:colons")}}})
    found = chain.resolve("reg.example.com")
    assert found is not None
    assert (found.username, found.password) == ("u", "p:with:colons")
    assert found.basic_header() == "Basic " + b64("u:p:with:colons")


def test_username_and_password_fields_work_without_auth(tmp_path: Path) -> None:
    chain = keychain(tmp_path, {"auths": {"https://reg.example.com/v1/": {
        "username": "u", "password": "p"}}})
    found = chain.resolve("reg.example.com")
    assert found is not None and (found.username, found.password) == ("u", "p")


def test_docker_hub_credentials_are_found_under_dockers_own_key(tmp_path: Path) -> None:
    chain = keychain(tmp_path, {"auths": {"https://index.docker.io/v1/": {"auth": b64("h:p")}}})
    found = chain.resolve("docker.io")
    assert found is not None and found.username == "h"


@pytest.mark.parametrize(("field", "attribute"), [("identitytoken", "identity_token"),
                                                  ("registrytoken", "registry_token")])
def test_tokens_in_auths_are_kept_apart_from_passwords(tmp_path: Path, field: str,
                                                       attribute: str) -> None:
    chain = keychain(tmp_path, {"auths": {"reg.example.com": {field: "tok"}}})
    found = chain.resolve("reg.example.com")
    assert found is not None and getattr(found, attribute) == "tok"
    assert not found.has_basic


def test_a_bad_config_is_one_line_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(RegistryError) as info:
        DockerConfig.load(path)
    assert str(info.value).startswith(f"reading registry credentials: {path}: invalid JSON")


def test_an_auth_that_is_not_user_colon_password_is_refused(tmp_path: Path) -> None:
    chain = keychain(tmp_path, {"auths": {"reg.example.com": {"auth": b64("nocolon")}}})
    with pytest.raises(RegistryError, match=r"the auth entry for reg\.example\.com is not base64"):
        chain.resolve("reg.example.com")


def test_a_credential_never_shows_its_secrets() -> None:
    cred = Credential("/kaniko/.docker/config.json", username="u", password="hunter2",
                      identity_token="idtok", registry_token="regtok")
    for text in (repr(cred), cred.describe()):
        assert "hunter2" not in text and "idtok" not in text and "regtok" not in text


# --- credential helpers ----------------------------------------------------------------------


def write_helper(directory: Path, name: str, script: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"docker-credential-{name}"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def helper_env(directory: Path) -> dict[str, str]:
    return {**os.environ, "PATH": f"{directory}{os.pathsep}{os.environ.get('PATH', '')}"}


def test_cred_helpers_run_the_named_helper_with_the_server_on_stdin(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    write_helper(bin_dir, "kilntest", 'read server; [ "$1" = get ] || exit 3\n'
                 'printf \'{"ServerURL":"%s","Username":"from-%s","Secret":"s"}\' '
                 '"$server" "$server"\n')
    chain = keychain(tmp_path, {"credHelpers": {"reg.example.com": "kilntest"},
                                "auths": {"reg.example.com": {"auth": b64("file:ignored")}}},
                     environ=helper_env(bin_dir))
    found = chain.resolve("reg.example.com")
    assert found is not None
    assert (found.username, found.password) == ("from-reg.example.com", "s")
    assert found.source == "docker-credential-kilntest"


def test_creds_store_serves_every_registry_and_hub_by_its_docker_key(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    write_helper(bin_dir, "store", 'read server\nprintf \'{"Username":"u","Secret":"%s"}\' '
                 '"$server"\n')
    chain = keychain(tmp_path, {"credsStore": "store"}, environ=helper_env(bin_dir))
    hub = chain.resolve("docker.io")
    assert hub is not None and hub.password == "https://index.docker.io/v1/"


def test_a_helper_token_user_means_an_identity_token(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    write_helper(bin_dir, "tok", 'echo \'{"Username":"<token>","Secret":"refresh"}\'\n')
    chain = keychain(tmp_path, {"credsStore": "tok"}, environ=helper_env(bin_dir))
    found = chain.resolve("reg.example.com")
    assert found is not None and found.identity_token == "refresh" and not found.has_basic


def test_a_helper_without_credentials_means_anonymous(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    write_helper(bin_dir, "empty", "echo 'credentials not found in native keychain'\nexit 1\n")
    chain = keychain(tmp_path, {"credsStore": "empty"}, environ=helper_env(bin_dir),
                     google=lambda: None)
    assert chain.resolve("reg.example.com") is None


def test_a_missing_helper_is_one_line_naming_it(tmp_path: Path) -> None:
    chain = keychain(tmp_path, {"credHelpers": {"reg.example.com": "nosuch"}},
                     environ={"PATH": str(tmp_path)})
    with pytest.raises(RegistryError) as info:
        chain.resolve("reg.example.com")
    assert str(info.value) == ("getting credentials for reg.example.com: credential helper "
                               "docker-credential-nosuch is not on PATH")


def test_a_failing_helper_reports_its_first_line_not_a_secret(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    write_helper(bin_dir, "broken", "echo 'token expired, run login' >&2\nexit 1\n")
    chain = keychain(tmp_path, {"credsStore": "broken"}, environ=helper_env(bin_dir))
    with pytest.raises(RegistryError) as info:
        chain.resolve("reg.example.com")
    assert str(info.value) == ("getting credentials for reg.example.com: docker-credential-broken"
                               " failed: token expired, run login")


def test_a_hanging_helpers_children_end_with_its_timeout(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    pid_file = tmp_path / "child.pid"
    # The child leaves the helper's session and process group, as a daemon would.
    write_helper(bin_dir, "hang", f"setsid sh -c 'echo $$ > {pid_file}; exec sleep 60' &\n"
                 "sleep 60\n")
    monkeypatch.setattr("executor.registry.credentials._HELPER_TIMEOUT", 1.0)
    chain = keychain(tmp_path, {"credsStore": "hang"}, environ=helper_env(bin_dir))
    with pytest.raises(RegistryError, match="did not answer within 1s"):
        chain.resolve("reg.example.com")
    child = int(pid_file.read_text())
    assert not Path(f"/proc/{child}").exists()


# --- google-auth selection -------------------------------------------------------------------


@pytest.mark.parametrize(("registry", "google"), [
    ("gcr.io", True), ("eu.gcr.io", True), ("us.gcr.io", True),
    ("europe-west1-docker.pkg.dev", True), ("us-docker.pkg.dev", True),
    ("docker.io", False), ("gcr.io.evil.example", False), ("pkg.dev", False),
    ("quay.io", False), ("127.0.0.1:5000", False),
])
def test_google_registries_are_recognised_by_host(registry: str, google: bool) -> None:
    assert is_google_registry(registry) is google


def test_google_credentials_are_asked_for_only_when_the_config_has_none(tmp_path: Path) -> None:
    asked: list[str] = []

    def fake_google() -> Credential:
        asked.append("google")
        return Credential("Google application default credentials",
                          username="oauth2accesstoken", password="ya29.token")

    chain = keychain(tmp_path, {"auths": {"eu.gcr.io": {"auth": b64("_json_key:{}")}}},
                     google=fake_google)
    from_config = chain.resolve("eu.gcr.io")
    assert from_config is not None and from_config.username == "_json_key"
    assert asked == []
    adc = chain.resolve("europe-docker.pkg.dev")
    assert adc is not None and adc.username == "oauth2accesstoken"
    assert chain.resolve("quay.io") is None
    assert asked == ["google"]


# --- challenges and scopes -------------------------------------------------------------------


@pytest.mark.parametrize(("header", "expected"), [
    ('Basic realm="Registry Realm"', Challenge("basic", {"realm": "Registry Realm"})),
    ('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
     'scope="repository:library/busybox:pull"',
     Challenge("bearer", {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                          "scope": "repository:library/busybox:pull"})),
    ('Bearer realm="https://r/t", error="insufficient_scope", scope="repository:a:pull,push"',
     Challenge("bearer", {"realm": "https://r/t", "error": "insufficient_scope",
                          "scope": "repository:a:pull,push"})),
    ('bearer realm=https://r/t,service=s', Challenge("bearer", {"realm": "https://r/t",
                                                                "service": "s"})),
    ('Basic realm="a \\"quoted\\" realm"', Challenge("basic", {"realm": 'a "quoted" realm'})),
])
def test_www_authenticate_challenges_are_parsed(header: str, expected: Challenge) -> None:
    assert Challenge.parse(header) == expected


def test_scopes_are_pull_push_and_the_mount_sources_pull() -> None:
    assert scopes_for(Scope("r", "app")) == ("repository:app:pull",)
    assert scopes_for(Scope("r", "app", push=True)) == ("repository:app:pull,push",)
    assert scopes_for(Scope("r", "app", push=True, mount_from="base")) == (
        "repository:app:pull,push", "repository:base:pull")


# --- TLS flags -------------------------------------------------------------------------------


def test_client_cert_flags_name_a_certificate_and_a_key() -> None:
    assert parse_client_certs(("reg:5000=/c.pem,/k.pem",)) == {
        "reg:5000": (Path("/c.pem"), Path("/k.pem"))}
    with pytest.raises(OptionsError, match="expected REGISTRY=CERT_FILE,KEY_FILE"):
        parse_client_certs(("reg=/c.pem",))


# --- mirrors ---------------------------------------------------------------------------------


def test_registry_maps_and_mirrors_become_pull_sources_in_order(tmp_path: Path) -> None:
    from executor.image.reference import ImageRef
    from executor.options import BuildOptions, parse_registry_maps
    from executor.publish import pull_sources

    maps = parse_registry_maps(("index.docker.io=mirror.gcr.io;quay.io=q.local/cache",
                                "quay.io=q2.local"))
    options = BuildOptions(tmp_path, tmp_path / "Dockerfile", registry_maps=maps,
                           registry_mirrors=("hub.local/proxy",))
    sources = pull_sources(options)
    assert [str(r) for r in sources.mirrors_for(ImageRef.parse("busybox"))] == [
        "mirror.gcr.io/library/busybox:latest", "hub.local/proxy/library/busybox:latest"]
    assert [str(r) for r in sources.mirrors_for(ImageRef.parse("quay.io/a/b:1"))] == [
        "q.local/cache/a/b:1", "q2.local/a/b:1"]
    assert sources.mirrors_for(ImageRef.parse("gcr.io/x/y")) == []


def test_a_registry_map_without_a_mirror_is_refused() -> None:
    from executor.options import parse_registry_maps

    with pytest.raises(OptionsError, match="expected REGISTRY=MIRROR"):
        parse_registry_maps(("quay.io",))


def test_googles_helper_named_but_not_installed_means_application_default_credentials(
        tmp_path: Path) -> None:
    def fake_google() -> Credential:
        return Credential("Google application default credentials",
                          username="oauth2accesstoken", password="ya29.token")

    chain = Keychain(DockerConfig.load(write_config(tmp_path, {"credHelpers": {
        "gcr.io": "gcr", "europe-docker.pkg.dev": "gcloud", "quay.io": "gcr"}})),
        environ={"PATH": str(tmp_path / "empty")}, google=fake_google)
    for registry in ("gcr.io", "europe-docker.pkg.dev"):
        found = chain.resolve(registry)
        assert found is not None and found.username == "oauth2accesstoken"
    with pytest.raises(RegistryError, match="docker-credential-gcr is not on PATH"):
        chain.resolve("quay.io")
