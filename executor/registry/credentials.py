"""Where a registry's credentials come from: the Docker config kaniko users already mount.

kaniko reads ``$DOCKER_CONFIG/config.json`` (the image sets ``DOCKER_CONFIG=/kaniko/.docker``)
with Docker's rules, then asks Google's application default credentials for Google's
registries. kiln does the same, in the same order, so the secret a CI system mounts for kaniko
works unchanged:

1. ``credHelpers[registry]``: run ``docker-credential-NAME get`` from ``PATH``;
2. ``credsStore``: the same helper protocol, for every registry;
3. ``auths[registry]``: ``auth`` (base64 ``user:password``), ``username``/``password``,
   ``identitytoken`` (an OAuth2 refresh token) or ``registrytoken`` (a bearer token as is);
4. for ``gcr.io``, ``*.gcr.io`` and ``*-docker.pkg.dev``: ``google.auth.default()``;
4b. ``KANIKO_<HOST>_USER`` and ``KANIKO_<HOST>_PASSWORD`` (the fork's ``env`` source: the
    registry upper-cased, ``-`` and ``.`` as ``_``; ``KANIKO_EXAMPLE_COM_USER`` also serves
    ``registry.example.com``);
5. otherwise anonymous.

ECR, ACR and GitLab work through their credential helpers (``docker-credential-ecr-login``,
``docker-credential-acr-env``) or a plain ``auths`` entry, as they do for Docker.

``--credential-helpers`` (the fork's flag) chooses the built-in sources tried after the Docker
config: ``env`` (``KANIKO_<HOST>_USER``/``_PASSWORD``, step 4b), ``google`` (step 4); the
fork's built-in ``ecr``, ``acr`` and ``gitlab`` are not built into kiln, their Docker credential
helpers are (step 1), so naming them changes nothing. Not given: all; an empty value: none.

A ``Credential`` never shows its secrets in ``repr`` or a log line; only where it came from.
"""

from __future__ import annotations

import base64
import binascii
import errno
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from executor import lifetime
from executor.errors import RegistryError
from executor.image.reference import DOCKER_HUB, DOCKER_HUB_API

log = logging.getLogger("kiln.auth")

DEFAULT_DOCKER_CONFIG = Path("/kaniko/.docker")
#: The key Docker uses for Docker Hub in ``auths`` and when asking a credential helper.
HUB_AUTH_KEY = "https://index.docker.io/v1/"
_HUB_HOSTS = frozenset({DOCKER_HUB, DOCKER_HUB_API, "index.docker.io"})
#: What a helper answers for "I have nothing for that registry" (docker-credential-helpers).
_NOT_FOUND = "credentials not found in native keychain"
#: Docker's marker for "the secret is an identity token, not a password".
_TOKEN_USERNAME = "<token>"
_GOOGLE_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
_HELPER_TIMEOUT = 60.0
#: The fork's built-in credential sources, in its order (``--credential-helpers``).
BUILTIN_SOURCES = ("env", "google", "ecr", "acr", "gitlab")


@dataclass(frozen=True)
class Credential:
    """What to authenticate to one registry with; ``source`` says where it came from.

    Exactly one kind is set: ``username`` + ``password`` (basic, or a token realm's basic
    login), ``identity_token`` (an OAuth2 refresh token) or ``registry_token`` (bearer as is).
    """

    source: str
    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)
    registry_token: str = field(default="", repr=False)

    @property
    def has_basic(self) -> bool:
        return bool(self.username or self.password)

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")

    def describe(self) -> str:
        """For logs and errors: where the credential came from and whose it is, no secret."""
        who = f" (user {self.username})" if self.username else ""
        return f"{self.source}{who}"


def registry_host(key: str) -> str:
    """The registry a config key names: ``https://reg.io/v1/`` -> ``reg.io``; Hub -> docker.io.

    Docker's ``ConvertToHostname``: drop the scheme and any path.
    """
    host = re.sub(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", "", key.strip()).split("/", 1)[0]
    return DOCKER_HUB if host in _HUB_HOSTS else host


def is_google_registry(registry: str) -> bool:
    """gcr.io, its regional hosts (``eu.gcr.io``) and Artifact Registry (``*-docker.pkg.dev``)."""
    host = registry.split(":", 1)[0].lower()
    return host == "gcr.io" or host.endswith(".gcr.io") or host.endswith("-docker.pkg.dev")


def docker_config_path(environ: Mapping[str, str] | None = None) -> Path:
    """``$DOCKER_CONFIG/config.json``, ``/kaniko/.docker/config.json`` when unset.

    kaniko also accepts ``DOCKER_CONFIG`` naming the file itself; so does kiln.
    """
    env = os.environ if environ is None else environ
    configured = env.get("DOCKER_CONFIG")
    base = Path(configured) if configured else DEFAULT_DOCKER_CONFIG
    if base.is_file():
        return base
    return base / "config.json"


@dataclass(frozen=True)
class DockerConfig:
    """The parts of a Docker ``config.json`` that say how to authenticate."""

    path: Path
    auths: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    cred_helpers: Mapping[str, str] = field(default_factory=dict)
    creds_store: str = ""

    @classmethod
    def load(cls, path: Path) -> DockerConfig:
        """Read ``path``; a missing file is an empty config (anonymous everywhere)."""
        try:
            text = _read_regular_file(path, _MAX_CONFIG_BYTES)
        except FileNotFoundError:
            return cls(path)
        except OSError as exc:
            raise RegistryError(f"reading registry credentials: {path}: {exc.strerror}") from None
        try:
            data = json.loads(text) if text.strip() else {}
        except ValueError as exc:
            raise RegistryError(f"reading registry credentials: {path}: invalid JSON: {exc}") \
                from None
        except RecursionError:
            raise RegistryError(f"reading registry credentials: {path}: invalid JSON: nested "
                                "too deeply") from None
        if not isinstance(data, dict):
            raise RegistryError(f"reading registry credentials: {path}: not a JSON object")
        auths = data.get("auths") or {}
        helpers = data.get("credHelpers") or {}
        store = data.get("credsStore") or ""
        if not isinstance(auths, dict) or not isinstance(helpers, dict) \
                or not isinstance(store, str):
            raise RegistryError(f"reading registry credentials: {path}: auths and credHelpers "
                                "must be objects, credsStore a string")
        return cls(path, {str(k): v for k, v in auths.items() if isinstance(v, dict)},
                   {str(k): str(v) for k, v in helpers.items()}, store)

    def helper_for(self, registry: str) -> str | None:
        """The credential helper name configured for ``registry``, if any."""
        for key, name in self.cred_helpers.items():
            if key == registry or registry_host(key) == registry:
                return name or None
        return self.creds_store or None

    def auth_entry(self, registry: str) -> Mapping[str, Any] | None:
        """The ``auths`` entry for ``registry``: an exact key first, then any key naming it."""
        if registry in self.auths:
            return self.auths[registry]
        for key, entry in self.auths.items():
            if registry_host(key) == registry:
                return entry
        return None


#: A docker config.json holds a few credentials; more than this is not one.
_MAX_CONFIG_BYTES = 16 << 20


def _read_regular_file(path: Path, limit: int) -> str:
    """The text of ``path``, refusing what is not a regular file without blocking on it.

    Opening a FIFO for reading blocks until a writer comes, forever in a pod; ``O_NONBLOCK``
    makes the open return so ``fstat`` can say what the path is. ``/dev/zero`` would be read
    without end, hence the size limit.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "not a file")
        raise OSError(errno.EINVAL, f"not a regular file ({kind})")
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {limit >> 20} MiB")
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise OSError(errno.EINVAL, f"not UTF-8 text (byte {exc.start})") from None


def credential_from_entry(entry: Mapping[str, Any], registry: str, source: str) -> Credential:
    """A ``Credential`` from one ``auths`` entry, as Docker decodes it."""
    username = str(entry.get("username") or "")
    password = str(entry.get("password") or "")
    encoded = entry.get("auth")
    if encoded:
        try:
            decoded = base64.b64decode(str(encoded), validate=False).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise RegistryError(f"reading registry credentials: {source}: the auth entry for "
                                f"{registry} is not base64 of user:password") from None
        username, colon, password = decoded.partition(":")
        if not colon:
            raise RegistryError(f"reading registry credentials: {source}: the auth entry for "
                                f"{registry} is not base64 of user:password")
    return Credential(source, username=username, password=password,
                      identity_token=str(entry.get("identitytoken") or ""),
                      registry_token=str(entry.get("registrytoken") or ""))


def run_credential_helper(name: str, registry: str,
                          environ: Mapping[str, str] | None = None) -> Credential | None:
    """``docker-credential-NAME get`` for ``registry``; None when the helper has nothing.

    The helper protocol: the server URL on stdin, ``{"Username": ..., "Secret": ...}`` on
    stdout. Its output is never logged: it holds the secret.
    """
    program = f"docker-credential-{name}"
    env = dict(os.environ if environ is None else environ)
    executable = shutil.which(program, path=env.get("PATH"))
    if executable is None:
        raise RegistryError(f"getting credentials for {registry}: credential helper {program} "
                            "is not on PATH")
    server = HUB_AUTH_KEY if registry == DOCKER_HUB else registry
    try:
        proc = _run_helper([executable, "get"], server.encode(), env)
    except subprocess.TimeoutExpired:
        raise RegistryError(f"getting credentials for {registry}: {program} did not answer "
                            f"within {_HELPER_TIMEOUT:.0f}s") from None
    except OSError as exc:
        raise RegistryError(f"getting credentials for {registry}: {program}: "
                            f"{exc.strerror}") from None
    except subprocess.SubprocessError as exc:  # the keeper could not be set up
        raise RegistryError(f"getting credentials for {registry}: {program} could not be "
                            f"started: {exc}") from None
    if proc.returncode != 0:
        said = (proc.stdout or proc.stderr).decode(errors="replace").strip()
        if _NOT_FOUND in said.lower():
            return None
        first = said.splitlines()[0] if said else f"exit status {proc.returncode}"
        raise RegistryError(f"getting credentials for {registry}: {program} failed: {first}")
    try:
        data = json.loads(proc.stdout)
        username, secret = str(data.get("Username") or ""), str(data.get("Secret") or "")
    except (ValueError, AttributeError, RecursionError):
        raise RegistryError(f"getting credentials for {registry}: {program} did not answer "
                            "with the helper protocol's JSON") from None
    if not secret:
        return None
    if username == _TOKEN_USERNAME:
        return Credential(program, identity_token=secret)
    return Credential(program, username=username, password=secret)


def google_credential() -> Credential | None:
    """An access token from Google's application default credentials, if there are any.

    ``google.auth.default()`` finds ``GOOGLE_APPLICATION_CREDENTIALS``, gcloud's user
    credentials or the metadata server (GKE, Cloud Build). Imported here: it is slow to import
    and most builds never talk to Google.
    """
    try:
        import google.auth
        import google.auth.exceptions
        import google.auth.transport.requests
    except ImportError:  # pragma: no cover - google-auth is a dependency
        return None
    try:
        creds, _ = google.auth.default(scopes=[_GOOGLE_SCOPE])
        creds.refresh(google.auth.transport.requests.Request())  # type: ignore[no-untyped-call]
    except google.auth.exceptions.GoogleAuthError as exc:
        log.debug("No Google application default credentials: %s",
                  str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return None
    token = getattr(creds, "token", None)
    if not token:
        return None
    return Credential("Google application default credentials", username="oauth2accesstoken",
                      password=str(token))


class Keychain:
    """Finds the credential for a registry once per build and remembers it.

    ``google`` is how Google's registries get a credential when the Docker config has none;
    tests pass their own.
    """

    def __init__(self, config: DockerConfig, *,
                 environ: Mapping[str, str] | None = None,
                 google: Callable[[], Credential | None] = google_credential,
                 sources: tuple[str, ...] = BUILTIN_SOURCES) -> None:
        self.config = config
        self.environ = environ
        self.google = google
        self.sources = frozenset(sources)
        self._found: dict[str, Credential | None] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_environment(cls, sources: tuple[str, ...] | None = None) -> Keychain:
        """The keychain for ``$DOCKER_CONFIG`` (default ``/kaniko/.docker``) and the built-in
        ``sources`` (``--credential-helpers``; None: all)."""
        if sources is None:
            sources = BUILTIN_SOURCES
        elif not sources:
            log.info("all credential helpers disabled")
        for name in sources:
            if name not in BUILTIN_SOURCES:
                log.warning("Unknown cred-source %r, skipping.", name)
        return cls(DockerConfig.load(docker_config_path()), sources=sources)

    def resolve(self, registry: str) -> Credential | None:
        """The credential for ``registry``, or None for anonymous access."""
        registry = registry_host(registry)
        with self._lock:
            if registry in self._found:
                return self._found[registry]
            found = self._lookup(registry)
            self._found[registry] = found
        if found is not None:
            log.debug("Using credentials for %s from %s", registry, found.describe())
        else:
            log.debug("No credentials for %s: anonymous access", registry)
        return found

    def where(self, registry: str) -> str:
        """Where credentials for ``registry`` are looked for, for an error message's advice."""
        registry = registry_host(registry)
        helper = self.config.helper_for(registry)
        if helper:
            return f"docker-credential-{helper}"
        return str(self.config.path)

    def _lookup(self, registry: str) -> Credential | None:
        helper = self.config.helper_for(registry)
        if helper and self._google_helper_missing(helper, registry):
            found = None  # kaniko's image bundles docker-credential-gcr; kiln asks Google itself
        elif helper:
            found = run_credential_helper(helper, registry, self.environ)
        else:
            entry = self.config.auth_entry(registry)
            found = (credential_from_entry(entry, registry, str(self.config.path))
                     if entry is not None else None)
            if found is not None and not (found.has_basic or found.identity_token
                                          or found.registry_token):
                found = None
        if found is None and "google" in self.sources and is_google_registry(registry):
            found = self.google()
        if found is None and "env" in self.sources:
            found = env_credential(registry, self.environ)
        return found

    def _google_helper_missing(self, helper: str, registry: str) -> bool:
        """A config naming Google's helper (``gcr``, as kaniko's image sets up, or ``gcloud``)
        for a Google registry, with the helper not on ``PATH``: the application default
        credentials are what that helper would have answered with."""
        if helper not in ("gcr", "gcloud") or not is_google_registry(registry):
            return False
        path = (os.environ if self.environ is None else self.environ).get("PATH")
        return shutil.which(f"docker-credential-{helper}", path=path) is None


def _run_helper(argv: list[str], stdin: bytes,
                env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    """Run a helper under a keeper (``executor.lifetime``): when it answers, times out or the
    build is interrupted, every process it started ends with it, so a hanging helper's
    children cannot outlive its timeout. It stays in kiln's process group (kiln as PID 1 does
    not reap it) and so gets a terminal's Ctrl-C with kiln."""
    return lifetime.run(argv, env=env, input=stdin, timeout=_HELPER_TIMEOUT, new_session=False,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def env_credential(registry: str, environ: Mapping[str, str] | None = None) -> Credential | None:
    """The fork's ``env`` source: ``KANIKO_<HOST>_USER`` and ``KANIKO_<HOST>_PASSWORD``, HOST
    the registry upper-cased with ``-`` as ``_`` and dots as ``_``, tried from the full name
    down to its last label (``KANIKO_REGISTRY_EXAMPLE_COM_USER``, then
    ``KANIKO_EXAMPLE_COM_USER``, then ``KANIKO_COM_USER``); a port stays as it is."""
    env = os.environ if environ is None else environ
    labels = registry.replace("-", "_").upper().split(".")
    for start in range(len(labels)):
        name = "KANIKO_" + "_".join(labels[start:])
        user, password = env.get(name + "_USER"), env.get(name + "_PASSWORD")
        if user is not None and password is not None:
            return Credential(f"${name}_USER", username=user, password=password)
    return None
