"""Answering a registry's ``401``: basic auth and the bearer-token realm flow.

A registry says how it wants to be authenticated in ``WWW-Authenticate``:

- ``Basic realm="..."``: every request carries ``user:password`` (htpasswd registries).
- ``Bearer realm="https://auth/token",service="reg",scope="repository:app:pull"``: kiln asks
  the realm for a token for the scopes the request needs (``repository:NAME:pull``,
  ``repository:NAME:pull,push``, and ``repository:SOURCE:pull`` for a cross-repository mount),
  with the basic credentials, an identity token (OAuth2 refresh grant) or anonymously, and sends
  it as ``Authorization: Bearer``. Tokens are kept per scope until shortly before they expire.

Once a registry has answered with a challenge, later requests carry the header up front, so a
layer upload is never sent twice just to learn that it needed a token.

Nothing here logs a secret: not a password, not a token, not an ``Authorization`` header.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

import requests

from executor.errors import RegistryError
from executor.image.reference import ImageRef
from executor.registry.client import Scope
from executor.registry.credentials import Credential, Keychain
from executor.registry.transport import Transport

log = logging.getLogger("kiln.auth")

#: The distribution token spec's default lifetime when a token server does not say.
DEFAULT_TOKEN_LIFETIME = 60.0
#: A token is renewed this fraction of its lifetime before it expires (at most 30 s early).
_RENEW_MARGIN = 0.1
_CLIENT_ID = "kiln"

_CHALLENGE_RE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_-]*)\s*(.*)$", re.S)
_PARAM_RE = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')


@dataclass(frozen=True)
class Challenge:
    """One parsed ``WWW-Authenticate`` value: the scheme (lower case) and its parameters."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, header: str | None) -> Challenge | None:
        """``Bearer realm="r",service="s"`` -> Challenge("bearer", {...}); None if absent."""
        if not header:
            return None
        match = _CHALLENGE_RE.match(header)
        if not match:
            return None
        params: dict[str, str] = {}
        rest = match.group(2)
        position = 0
        while position < len(rest):
            param = _PARAM_RE.match(rest, position)
            if not param or param.end() == position:
                break
            quoted, bare = param.group(2), param.group(3)
            value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare or ""
            params[param.group(1).lower()] = value
            position = param.end()
        return cls(match.group(1).lower(), params)


def scopes_for(scope: Scope) -> tuple[str, ...]:
    """The token scopes a request needs: its repository, and a mount's source."""
    actions = "pull,push" if scope.push else "pull"
    scopes = [f"repository:{scope.repository}:{actions}"]
    if scope.mount_from and scope.mount_from != scope.repository:
        scopes.append(f"repository:{scope.mount_from}:pull")
    return tuple(scopes)


@dataclass
class _Token:
    header: str
    renew_at: float


class RegistryAuth:
    """The ``Authenticator`` ``RegistryClient`` consults: credentials from ``keychain``, tokens
    fetched over ``transport`` (with the registry's TLS settings), one state per build."""

    def __init__(self, keychain: Keychain, transport: Transport, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.keychain = keychain
        self.transport = transport
        self.clock = clock
        self._challenges: dict[str, Challenge] = {}
        self._tokens: dict[tuple[str, tuple[str, ...]], _Token] = {}
        #: Why the last token request for a registry failed, for the error message.
        self._token_failures: dict[str, str] = {}
        self._lock = threading.RLock()

    # --- the Authenticator protocol ------------------------------------------------------------

    def authorization(self, scope: Scope) -> str | None:
        """The header to send up front once the registry's scheme is known."""
        with self._lock:
            challenge = self._challenges.get(scope.registry)
            if challenge is None:
                return None
            return self._answer(scope, challenge, fresh=False)

    def challenge(self, scope: Scope, response: requests.Response) -> str | None:
        """Answer the ``401`` in ``response``; None when retrying cannot help."""
        challenge = Challenge.parse(response.headers.get("WWW-Authenticate"))
        if challenge is None or challenge.scheme not in ("basic", "bearer"):
            return None
        with self._lock:
            self._challenges[scope.registry] = challenge
            header = self._answer(scope, challenge, fresh=True)
        sent = response.request.headers.get("Authorization") if response.request else None
        if header is None or header == sent:
            return None
        return header

    def explain(self, scope: Scope, response: requests.Response) -> str | None:
        """What the user should check after a final ``401`` or ``403``, in a few words."""
        registry = scope.registry
        where = self.keychain.where(registry)
        credential = self.keychain.resolve(registry)
        challenge = Challenge.parse(response.headers.get("WWW-Authenticate"))
        denied = response.status_code == 403 or (
            challenge is not None and challenge.params.get("error") == "insufficient_scope")
        with self._lock:
            token_failure = self._token_failures.get(registry)
        if credential is None:
            if where.startswith("docker-credential-"):
                return f"{where} has no credentials for {registry}"
            return f"no credentials for {registry} in {where}"
        if denied and not token_failure:
            action = "push to" if scope.push else "pull from"
            who = f"user {credential.username}" if credential.username else "the credentials"
            return f"{who} from {credential.source} may not {action} {scope.repository}"
        prefix = f"{token_failure}: " if token_failure else ""
        if where.startswith("docker-credential-"):
            return f"{prefix}check the credentials {where} gives for {registry}"
        return f"{prefix}check the credentials for {registry} in {where}"

    # --- answers -------------------------------------------------------------------------------

    def _answer(self, scope: Scope, challenge: Challenge, *, fresh: bool) -> str | None:
        credential = self.keychain.resolve(scope.registry)
        if challenge.scheme == "basic":
            return credential.basic_header() if credential and credential.has_basic else None
        if credential is not None and credential.registry_token:
            return f"Bearer {credential.registry_token}"
        key = (scope.registry, scopes_for(scope))
        cached = self._tokens.get(key)
        if cached is not None and not fresh and self.clock() < cached.renew_at:
            return cached.header
        token = self._fetch_token(scope, challenge, credential)
        if token is None:
            self._tokens.pop(key, None)
            return None
        self._tokens[key] = token
        return token.header

    def _fetch_token(self, scope: Scope, challenge: Challenge,
                     credential: Credential | None) -> _Token | None:
        realm = challenge.params.get("realm", "")
        if urlsplit(realm).scheme not in ("http", "https"):
            raise RegistryError(f"registry {scope.registry} asks for a token from an invalid "
                                f"realm {realm!r}")
        scopes = scopes_for(scope)
        service = challenge.params.get("service", "")
        # The request goes out with the registry's TLS settings, as kaniko's transport does.
        ref = ImageRef(scope.registry, scope.repository)
        headers = {"Accept": "application/json"}
        if credential is not None and credential.identity_token:
            form = {"grant_type": "refresh_token", "refresh_token": credential.identity_token,
                    "client_id": _CLIENT_ID, "scope": " ".join(scopes)}
            if service:
                form["service"] = service
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            response = self.transport.request("POST", ref, realm, push=scope.push,
                                              headers=headers, body=urlencode(form).encode())
        else:
            query = ([("service", service)] if service else []) + [("scope", s) for s in scopes]
            url = realm + ("&" if "?" in realm else "?") + urlencode(query)
            if credential is not None and credential.has_basic:
                headers["Authorization"] = credential.basic_header()
            response = self.transport.request("GET", ref, url, push=scope.push, headers=headers)
        with response:
            if response.status_code in (401, 403):
                self._token_failures[scope.registry] = (
                    f"the token server {_origin(realm)} answered {response.status_code} "
                    f"{response.reason}")
                log.debug("Token request for %s refused: %d", scope.registry,
                          response.status_code)
                return None
            if response.status_code != 200:
                raise RegistryError(f"getting a token for {' '.join(scopes)} from "
                                    f"{_origin(realm)}: {response.status_code} "
                                    f"{response.reason}")
            try:
                data = json.loads(response.content)
                token = data.get("token") or data.get("access_token")
                lifetime = float(data.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
            except (ValueError, AttributeError, TypeError, RecursionError):
                token = None
            if not isinstance(token, str) or not token:
                raise RegistryError(f"getting a token for {' '.join(scopes)} from "
                                    f"{_origin(realm)}: the answer holds no token")
        self._token_failures.pop(scope.registry, None)
        log.debug("Got a token for %s (%s), valid %.0fs", scope.registry, " ".join(scopes),
                  lifetime)
        margin = min(lifetime * _RENEW_MARGIN, 30.0)
        return _Token(f"Bearer {token}", self.clock() + lifetime - margin)


def _origin(url: str) -> str:
    """``scheme://host/path`` of a realm, without a query that could carry anything private."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"
