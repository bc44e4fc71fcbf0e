"""How kiln talks to a registry host: scheme, TLS verification, retries, one pooled session.

Everything above this module speaks in registry API paths; this module decides whether they go
over HTTPS with or without certificate checks or over plain HTTP, and it retries what is worth
retrying. The policy is kaniko's (which is go-containerregistry's):

- ``--insecure`` (destinations), ``--insecure-pull`` (base images) and ``--insecure-registry
  HOST`` (both) make a registry *insecure*: it is tried over HTTPS without certificate checks
  first and over plain HTTP when HTTPS does not answer. Which scheme answered is remembered.
- ``--skip-tls-verify`` (destinations), ``--skip-tls-verify-pull`` and
  ``--skip-tls-verify-registry HOST``: HTTPS, certificate not verified.
- Nothing else ever falls back to plain HTTP; a loopback registry is not insecure by itself.

Certificates are checked against the system's trust store (OpenSSL's default paths, so
``SSL_CERT_FILE`` works) plus every certificate file in the directories of ``SSL_CERT_DIR``
(kaniko's image sets ``/kaniko/ssl/certs``; like Go, kiln reads each file there and needs no
``c_rehash`` links), plus ``--registry-certificate REG=ca.pem`` for that registry. A
``--registry-client-cert REG=cert.pem,key.pem`` is presented to that registry (mTLS). Each
registry with its own certificates gets its own session, so a token realm or a redirect reached
on its behalf is checked the same way, as kaniko's per-registry transport does. Proxies come from
the standard ``HTTPS_PROXY``/``NO_PROXY`` variables.

Connection failures, timeouts, ``429`` and ``5xx`` answers are retried with exponential backoff
(``Retry-After`` honoured); every other answer is returned for the caller to judge.
"""

from __future__ import annotations

import contextlib
import email.utils
import http.client
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter

from executor import __version__
from executor.errors import RegistryError
from executor.image.reference import DOCKER_HUB, DOCKER_HUB_API, ImageRef
from executor.log import HEARTBEAT_SECONDS, PROGRESS_SECONDS, TransferMeter, heartbeat

if TYPE_CHECKING:
    from requests.adapters import _HostParams, _PoolKwargs

log = logging.getLogger(__name__)

USER_AGENT = f"kiln/{__version__}"
#: Answers that mean "try again later" rather than "no".
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
#: The longest wait a ``Retry-After`` header can impose on us.
MAX_RETRY_AFTER = 60.0

_HUB_NAMES = frozenset({DOCKER_HUB, DOCKER_HUB_API, "index.docker.io"})



@dataclass(frozen=True)
class MeteredFile:
    """A file to upload whose progress ``meter`` counts (its progress lines replace the
    "still waiting" ones while it is sent)."""

    path: Path
    meter: TransferMeter


Body = bytes | Path | MeteredFile | None


@dataclass(frozen=True)
class TransportOptions:
    """The registry connection flags, as kaniko names them.

    ``insecure`` / ``skip_tls_verify`` apply to registries pushed to, the ``*_pull`` variants to
    registries pulled from, and the ``*_registries`` sets to the named hosts in both directions.
    """

    insecure: bool = False
    insecure_pull: bool = False
    insecure_registries: frozenset[str] = frozenset()
    skip_tls_verify: bool = False
    skip_tls_verify_pull: bool = False
    skip_tls_verify_registries: frozenset[str] = frozenset()
    #: How many times a failed request is retried (so ``retries + 1`` attempts in all).
    retries: int = 3
    #: Seconds before the first retry; doubled for each further one, up to ``max_backoff``.
    backoff: float = 0.5
    max_backoff: float = 30.0
    connect_timeout: float = 30.0
    #: Seconds without a byte from the server before a request is given up.
    read_timeout: float = 120.0
    #: ``--registry-certificate``: registry -> CA bundle trusted for it (besides the system's).
    registry_certificates: Mapping[str, Path] = field(default_factory=dict)
    #: ``--registry-client-cert``: registry -> (certificate, key) presented to it.
    client_certificates: Mapping[str, tuple[Path, Path]] = field(default_factory=dict)

    def tls_profile(self, registry: str) -> TLSProfile:
        """The certificates that apply to ``registry`` (none beyond the system's, usually)."""
        return TLSProfile(_lookup(self.registry_certificates, registry),
                          _lookup(self.client_certificates, registry))

    def is_insecure(self, registry: str, *, push: bool) -> bool:
        """True when ``registry`` may be reached over plain HTTP."""
        flag = self.insecure if push else self.insecure_pull
        return flag or _names_match(self.insecure_registries, registry)

    def verifies_tls(self, registry: str, *, push: bool) -> bool:
        """False when the certificate of ``registry`` is not checked."""
        if self.is_insecure(registry, push=push):
            return False
        flag = self.skip_tls_verify if push else self.skip_tls_verify_pull
        return not (flag or _names_match(self.skip_tls_verify_registries, registry))


#: Environment variables that tune the retry policy (no kaniko flag exists for it): a slow
#: link wants longer timeouts, a test of faults wants short ones.
TIMING_VARIABLES = {"KILN_REGISTRY_RETRIES": "retries", "KILN_REGISTRY_BACKOFF": "backoff",
                    "KILN_REGISTRY_TIMEOUT": "read_timeout",
                    "KILN_REGISTRY_CONNECT_TIMEOUT": "connect_timeout"}


def timing_from_environment(environ: Mapping[str, str] | None = None) -> dict[str, float]:
    """``TransportOptions`` fields set by ``KILN_REGISTRY_*`` variables; a bad value is an
    error naming the variable."""
    environ = os.environ if environ is None else environ
    out: dict[str, float] = {}
    for variable, name in TIMING_VARIABLES.items():
        value = environ.get(variable, "").strip()
        if not value:
            continue
        try:
            number = int(value) if name == "retries" else float(value)
        except ValueError:
            number = -1
        if number < 0 or (name != "retries" and number == 0):
            raise RegistryError(f"{variable}={value!r}: expected a "
                                f"{'count' if name == 'retries' else 'number of seconds'}")
        out[name] = number
    return out


@dataclass(frozen=True)
class TLSProfile:
    """Extra trust and a client certificate for one registry; the empty profile is the default."""

    ca_bundle: Path | None = None
    client_cert: tuple[Path, Path] | None = None

    def context(self, *, verify: bool) -> ssl.SSLContext:
        """An SSL context: system trust, ``SSL_CERT_DIR``, this profile's CA and client cert."""
        if verify:
            context = ssl.create_default_context()
            _load_cert_dirs(context)
            if self.ca_bundle is not None:
                try:
                    context.load_verify_locations(cafile=str(self.ca_bundle))
                except (OSError, ssl.SSLError) as exc:
                    raise RegistryError(f"--registry-certificate {self.ca_bundle}: cannot load: "
                                        f"{describe_connection_error(exc)}") from None
        else:
            # Nothing is verified, so the system's CA store (tens of ms to load, paid on the
            # HTTPS probe of every insecure registry) is not loaded.
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.client_cert is not None:
            cert, key = self.client_cert
            try:
                context.load_cert_chain(str(cert), str(key))
            except (OSError, ssl.SSLError) as exc:
                raise RegistryError(f"--registry-client-cert {cert},{key}: cannot load: "
                                    f"{describe_connection_error(exc)}") from None
        return context


def _load_cert_dirs(context: ssl.SSLContext) -> None:
    """Every certificate file in ``SSL_CERT_DIR``'s directories, as Go reads them."""
    for directory in filter(None, os.environ.get("SSL_CERT_DIR", "").split(os.pathsep)):
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        for name in names:
            path = os.path.join(directory, name)
            if not os.path.isfile(path):
                continue
            try:
                context.load_verify_locations(cafile=path)
            except (OSError, ssl.SSLError, ValueError):
                log.debug("SSL_CERT_DIR: %s holds no certificate, skipped", path)


class _TLSAdapter(HTTPAdapter):
    """An adapter whose HTTPS connections use a ``TLSProfile``'s contexts, not certifi's bundle."""

    def __init__(self, profile: TLSProfile, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.profile = profile
        self._contexts: dict[bool, ssl.SSLContext] = {}
        self._context_lock = threading.Lock()

    def _context(self, verify: bool) -> ssl.SSLContext:
        with self._context_lock:
            if verify not in self._contexts:
                self._contexts[verify] = self.profile.context(verify=verify)
            return self._contexts[verify]

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: bool | str, cert: Any = None,
    ) -> tuple[_HostParams, _PoolKwargs]:
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(
            request, verify, cert)
        if host_params.get("scheme") == "https":
            # The context carries the trust and the client certificate; urllib3 would load
            # these into it again on every connection.
            pool_kwargs.pop("ca_certs", None)
            pool_kwargs.pop("ca_cert_dir", None)
            pool_kwargs.pop("cert_file", None)
            pool_kwargs.pop("key_file", None)
            pool_kwargs["ssl_context"] = self._context(verify is not False)
        return host_params, pool_kwargs


def _lookup(table: Mapping[str, Any], registry: str) -> Any:
    if registry in table:
        return table[registry]
    if registry in _HUB_NAMES:
        for name in _HUB_NAMES:
            if name in table:
                return table[name]
    return None


def _names_match(names: frozenset[str], registry: str) -> bool:
    if registry in names:
        return True
    # Docker Hub goes by several names; a flag naming any of them means the Hub.
    return registry in _HUB_NAMES and not names.isdisjoint(_HUB_NAMES)


class Transport:
    """A pooled HTTP session that reaches registries the way ``TransportOptions`` allow.

    Thread-safe for concurrent requests (layer downloads run in parallel). Close it, or use it
    as a context manager, to release pooled connections.
    """

    def __init__(self, options: TransportOptions | None = None, *,
                 sleep: Callable[[float], None] = time.sleep, pool_size: int = 16) -> None:
        self.options = options or TransportOptions()
        self.sleep = sleep
        #: Told the host of every response (the trace's request count per registry).
        self.on_response: Callable[[str], None] | None = None
        self._pool_size = pool_size
        self._sessions: dict[TLSProfile, requests.Session] = {}
        #: The session for registries without certificates of their own.
        self.session = self._new_session(TLSProfile())
        self._schemes: dict[tuple[str, bool], str] = {}
        self._lock = threading.Lock()
        self._warned: set[str] = set()

    def _new_session(self, profile: TLSProfile) -> requests.Session:
        session = requests.Session()
        session.headers["User-Agent"] = USER_AGENT
        adapter = _TLSAdapter(profile, pool_connections=8, pool_maxsize=self._pool_size,
                              max_retries=0)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        session.hooks["response"].append(self._observe)
        self._sessions[profile] = session
        return session

    def _observe(self, response: requests.Response, *args: object, **kwargs: object) -> None:
        if self.on_response is not None:
            self.on_response(urlsplit(response.url).netloc)

    def session_for(self, registry: str) -> requests.Session:
        """The pooled session whose TLS settings are ``registry``'s."""
        profile = self.options.tls_profile(registry)
        with self._lock:
            session = self._sessions.get(profile)
            if session is None:
                session = self._new_session(profile)
            return session

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            sessions = list(self._sessions.values())
        for session in sessions:
            session.close()

    def request(self, method: str, ref: ImageRef, target: str, *, push: bool,
                headers: Mapping[str, str] | None = None, body: Body = None,
                stream: bool = False, retries: int | None = None) -> requests.Response:
        """Send one API request for ``ref``'s registry, retrying what is worth retrying.

        ``target`` is a path (``/v2/...``) on the registry or an absolute URL (an upload
        ``Location``). Redirects are followed. Returns whatever status the registry gave; raises
        ``RegistryConnectionError`` only when no answer came. ``retries`` overrides the
        transport's count: an upload ``PUT`` is never re-sent to its session (a broken upload
        session is gone), its caller opens a new one instead.
        """
        limit = self.options.retries if retries is None else retries
        attempt = 0
        waiting = f"Still waiting for registry {ref.registry} to answer {method} " \
            f"{request_path(target)}"
        while True:
            try:
                with self._beating(waiting, body):
                    response = self._send(method, ref, target, push=push, headers=headers,
                                          body=body, stream=stream)
            except requests.RequestException as exc:
                failure = RegistryConnectionError(describe_failure(exc, ref.registry, method,
                                                                   target),
                                                  transient=_is_transient(exc),
                                                  reason=describe_connection_error(exc))
                if attempt < limit and failure.transient:
                    self._wait_before_retry(attempt, limit, method, ref, target,
                                            failure.reason)
                    attempt += 1
                    continue
                raise failure from exc
            if response.status_code in RETRY_STATUSES and attempt < limit:
                delay = retry_after(response)
                response.close()
                self._wait_before_retry(
                    attempt, limit, method, ref, target,
                    f"{response.status_code} {response.reason or ''}".rstrip(),
                    None if delay is None else min(delay, MAX_RETRY_AFTER))
                attempt += 1
                continue
            return response

    def _wait_before_retry(self, attempt: int, limit: int, method: str, ref: ImageRef,
                           target: str, reason: str, delay: float | None = None) -> None:
        """Log the retry in kaniko's words (a WARN line, so a slow registry is never a silent
        minute in the default log) and wait for it."""
        wait = self.backoff_delay(attempt) if delay is None else delay
        log.warning("Retrying %s %s on %s after %s due to %s (retry %d of %d)", method,
                    request_path(target), ref.registry, format_wait(wait), reason, attempt + 1,
                    limit)
        self.sleep(wait)

    def _beating(self, waiting: str, body: Body) -> contextlib.AbstractContextManager[None]:
        """The heartbeat of one request: an upload's progress, or that it is waited for."""
        if isinstance(body, MeteredFile):
            body.meter.restart()
            return heartbeat(body.meter.describe, self.progress_every)
        return heartbeat(lambda: waiting, self.heartbeat_every)

    @property
    def progress_every(self) -> float:
        """Seconds between progress lines of a layer transfer."""
        return min(PROGRESS_SECONDS, self.heartbeat_every)

    @property
    def heartbeat_every(self) -> float:
        """Seconds between "still waiting" lines: a few per read timeout, at most 30 s."""
        return min(HEARTBEAT_SECONDS, self.options.read_timeout / 4)

    def backoff_delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt + 1``."""
        return float(min(self.options.backoff * 2 ** attempt, self.options.max_backoff))

    def _send(self, method: str, ref: ImageRef, target: str, *, push: bool,
              headers: Mapping[str, str] | None, body: Body,
              stream: bool) -> requests.Response:
        """One attempt, falling back from HTTPS to HTTP for an insecure registry."""
        verify = self.options.verifies_tls(ref.registry, push=push)
        if not verify:
            self._warn_unverified(ref.registry)
        urls: list[tuple[str, str | None]]
        if target.startswith(("https://", "http://")):
            urls = [(target, None)]
        else:
            urls = [(f"{scheme}://{ref.api_host}{target}", scheme)
                    for scheme in self._schemes_for(ref, push=push)]
        failure: requests.RequestException | None = None
        session = self.session_for(ref.registry)
        for url, scheme in urls:
            try:
                with _opened(body) as data:
                    response = session.request(
                        method, url, headers=headers, data=data, stream=stream, verify=verify,
                        timeout=(self.options.connect_timeout, self.options.read_timeout),
                        allow_redirects=True,
                    )
            except (requests.ConnectionError, requests.Timeout) as exc:
                failure = exc
                continue
            if scheme is not None:
                with self._lock:
                    self._schemes[(ref.api_host, push)] = scheme
            return response
        assert failure is not None
        raise failure

    def _schemes_for(self, ref: ImageRef, *, push: bool) -> list[str]:
        with self._lock:
            known = self._schemes.get((ref.api_host, push))
        if known:
            return [known]
        if self.options.is_insecure(ref.registry, push=push):
            return ["https", "http"]
        return ["https"]

    def _warn_unverified(self, registry: str) -> None:
        with self._lock:
            if registry in self._warned:
                return
            self._warned.add(registry)
        # The user asked for this; one warning from us beats one from urllib3 per request.
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        log.warning("Not verifying the TLS certificate of registry %s", registry)


@contextlib.contextmanager
def _opened(body: Body) -> Iterator[IO[bytes] | bytes | None]:
    """The request body: a file is opened afresh for each attempt and streamed from disk."""
    if isinstance(body, Path):
        with body.open("rb") as handle:
            yield handle
    elif isinstance(body, MeteredFile):
        with body.path.open("rb") as handle:
            yield _CountingReader(handle, body.meter)  # type: ignore[misc]
    else:
        yield body


def _is_transient(exc: requests.RequestException) -> bool:
    """A failure that may go away on its own (not a certificate that will never verify)."""
    if isinstance(exc, requests.exceptions.SSLError):
        return False
    return isinstance(exc, requests.ConnectionError | requests.Timeout
                      | requests.exceptions.ChunkedEncodingError)


class RegistryConnectionError(RegistryError):
    """No answer came from a registry: it could not be reached, or the connection broke.

    ``transient`` says whether trying again may help (a reset may; a certificate that does not
    verify never will).
    """

    def __init__(self, message: str, *, transient: bool, reason: str = "") -> None:
        super().__init__(message)
        self.transient = transient
        #: The cause in a few words (``connection reset by peer``), for retry lines.
        self.reason = reason or message


def request_path(target: str) -> str:
    """The path of a request target, without the query (upload state tokens are long)."""
    return urlsplit(target).path or target


def format_wait(seconds: float) -> str:
    """A wait as kaniko prints a Go duration: ``500ms``, ``2s``, ``1.5s``."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    return f"{seconds:g}s" if seconds == int(seconds) else f"{seconds:.1f}s"


def describe_failure(exc: BaseException, registry: str, method: str, target: str) -> str:
    """One line for a request that got no (complete) answer.

    A registry that could not be reached at all is ``cannot reach registry R: why``; one that
    answered and then broke off says what broke, rather than urllib3's ``IncompleteRead`` tuple.
    """
    where = f"{method} {request_path(target)}"
    incomplete = next((c for c in _causes(exc)
                       if isinstance(c, urllib3.exceptions.IncompleteRead
                                     | http.client.IncompleteRead)), None)
    if incomplete is not None:
        received = incomplete.partial if isinstance(incomplete.partial, int) \
            else len(incomplete.partial)
        return (f"registry {registry} broke off its answer to {where}: received {received} "
                f"bytes, {incomplete.expected} more were due")
    if _reached(exc):
        return f"connection to registry {registry} broke during {where}: " \
            f"{describe_connection_error(exc)}"
    return f"cannot reach registry {registry}: {describe_connection_error(exc)}"


def _reached(exc: BaseException) -> bool:
    """True when the failure came after a connection was made (a reset, a read timeout, a
    broken body), false when none could be made (refused, no such host, TLS refused)."""
    causes = list(_causes(exc))
    if any(isinstance(c, urllib3.exceptions.NewConnectionError | socket.gaierror
                      | urllib3.exceptions.ConnectTimeoutError | ssl.SSLError
                      | ConnectionRefusedError) for c in causes):
        return False
    return isinstance(exc, requests.exceptions.ChunkedEncodingError
                      | requests.exceptions.ReadTimeout) or any(
        isinstance(c, ConnectionResetError | BrokenPipeError | http.client.RemoteDisconnected
                   | urllib3.exceptions.ReadTimeoutError | urllib3.exceptions.ProtocolError)
        for c in causes)


def retry_after(response: requests.Response) -> float | None:
    """The wait a ``Retry-After`` header asks for (seconds or an HTTP date), if any."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def describe_connection_error(exc: BaseException) -> str:
    """The root cause of a connection failure in a few words: ``connection refused``."""
    for cause in _causes(exc):
        if isinstance(cause, urllib3.exceptions.IncompleteRead | http.client.IncompleteRead):
            received = cause.partial if isinstance(cause.partial, int) else len(cause.partial)
            return f"the answer broke off after {received} bytes ({cause.expected} more were due)"
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS certificate verification failed: {cause.verify_message}"
        if isinstance(cause, ssl.SSLError):
            if cause.reason == "WRONG_VERSION_NUMBER":
                # The usual reason: a plain-HTTP registry that was not declared insecure.
                return ("TLS handshake failed: WRONG_VERSION_NUMBER (if the registry serves "
                        "plain HTTP, name it with --insecure-registry)")
            return f"TLS handshake failed: {cause.reason or cause}"
        if isinstance(cause, socket.gaierror):
            return f"cannot resolve host: {_lower_first(cause.strerror or str(cause))}"
        if isinstance(cause, TimeoutError | urllib3.exceptions.TimeoutError) and not isinstance(
                cause, urllib3.exceptions.NewConnectionError):  # a subclass, oddly
            return "timed out"
        if isinstance(cause, OSError) and cause.strerror:
            return _lower_first(cause.strerror)
    if isinstance(exc, requests.Timeout):
        return "timed out"
    return _lower_first(str(exc)) or type(exc).__name__


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything it wraps, innermost last: requests hides causes in args/reason."""
    seen: set[int] = set()
    queue: list[BaseException] = [exc]
    found: list[BaseException] = []
    while queue:
        current = queue.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        found.append(current)
        linked: list[Any] = [current.__cause__, current.__context__,
                             getattr(current, "reason", None), *current.args]
        queue.extend(item for item in linked if isinstance(item, BaseException))
    # The most specific cause is the deepest one.
    return reversed(found)


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


class _CountingReader:
    """A file that counts what is read from it into a meter. requests streams it like the
    file it wraps (``fileno``, ``tell`` and ``mode`` give it the length for Content-Length;
    without them it would add ``Transfer-Encoding: chunked`` beside it)."""

    mode = "rb"  # requests' length check reads it

    def __init__(self, handle: IO[bytes], meter: TransferMeter) -> None:
        self._handle, self._meter = handle, meter

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self._meter.done += len(data)
        return data

    def fileno(self) -> int:
        return self._handle.fileno()

    def tell(self) -> int:
        return self._handle.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._handle.seek(offset, whence)

    def __iter__(self) -> Iterator[bytes]:
        return iter(lambda: self.read(1 << 16), b"")
