"""A bearer-token server for the distribution registry's ``auth.token`` section, in-process.

It signs real JWTs (RS256) that the real registry verifies: the registry (distribution 2.8)
checks the ``x5c`` chain in the JWS header against its ``rootcertbundle``, then ``iss``,
``aud`` (the ``service``), ``exp``/``nbf`` and the ``access`` claim. Here the signing
certificate is self-signed and is itself the root bundle.

Users and what they may do are configured per test: ``users = {"alice": ("pw", {"app":
"pull,push", "base": "pull"})}``; the issuer grants the intersection of what is asked and what
is allowed, like Docker Hub's and Harbor's token services do, so a missing permission shows up
at the registry as ``insufficient_scope``.
"""

from __future__ import annotations

import base64
import datetime
import fnmatch
import http.server
import json
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from tests.support.registry import free_port

ISSUER = "kiln-test-issuer"
SERVICE = "kiln-test-registry"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenIssuer:
    """``start()`` it, point a registry's ``auth.token.realm`` at ``realm``; ``stop()`` it."""

    workdir: Path
    #: user -> (password, {repository glob: "pull" | "pull,push"})
    users: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)
    #: What anonymous requests may do, by repository glob.
    anonymous: dict[str, str] = field(default_factory=dict)
    #: identity (refresh) token -> user, for the OAuth2 refresh-token grant.
    refresh_tokens: dict[str, str] = field(default_factory=dict)
    expires_in: int = 300
    port: int = 0
    #: Every token request: (method, user or "" for anonymous, scopes asked).
    requests: list[tuple[str, str, tuple[str, ...]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kiln test token signer")])
        now = datetime.datetime.now(datetime.UTC)
        self._cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.root_cert_bundle = self.workdir / "token-signer.pem"
        self.root_cert_bundle.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        self._server: http.server.ThreadingHTTPServer | None = None
        self._lock = threading.Lock()

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def registry_config(self) -> str:
        """The ``auth`` section a registry needs to trust this issuer."""
        return (f"auth:\n  token:\n    realm: {self.realm}\n    service: {SERVICE}\n"
                f"    issuer: {ISSUER}\n    rootcertbundle: {self.root_cert_bundle}\n")

    def start(self) -> TokenIssuer:
        if not self.port:
            self.port = free_port()
        issuer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                user = issuer.authenticate(self.headers.get("Authorization"))
                scopes = tuple(query.get("scope", []))
                self._answer("GET", user, scopes)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(length).decode())
                refresh = (form.get("refresh_token") or [""])[0]
                user: str | None = issuer.refresh_tokens.get(refresh)
                if (form.get("grant_type") or [""])[0] != "refresh_token":
                    user = None
                scopes = tuple((form.get("scope") or [""])[0].split())
                self._answer("POST", user, scopes)

            def _answer(self, method: str, user: str | None, scopes: tuple[str, ...]) -> None:
                with issuer._lock:
                    issuer.requests.append((method, user or "", scopes))
                if user is None:
                    self.send_response(401)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(b'{"details": "invalid credentials"}')
                    return
                body = json.dumps(issuer.token_response(user, scopes)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def authenticate(self, header: str | None) -> str | None:
        """The user a Basic header names when the password is right; "" for no header."""
        if not header:
            return ""
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(value).decode().partition(":")
        except ValueError:
            return None
        known = self.users.get(user)
        if known is None or not secrets.compare_digest(known[0], password):
            return None
        return user

    def granted(self, user: str, scopes: tuple[str, ...]) -> list[dict[str, Any]]:
        """The ``access`` claim: each asked scope cut down to what ``user`` may do."""
        rules: Mapping[str, str] = self.users[user][1] if user else self.anonymous
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind != "repository":
                continue
            allowed: set[str] = set()
            for pattern, permitted in rules.items():
                if fnmatch.fnmatchcase(name, pattern):
                    allowed |= set(permitted.split(","))
            given = [action for action in actions.split(",") if action in allowed]
            access.append({"type": "repository", "name": name, "actions": given})
        return access

    def token_response(self, user: str, scopes: tuple[str, ...]) -> dict[str, Any]:
        now = int(time.time())
        claims = {
            "iss": ISSUER, "sub": user, "aud": SERVICE, "exp": now + self.expires_in,
            "nbf": now - 10, "iat": now, "jti": secrets.token_hex(8),
            "access": self.granted(user, scopes),
        }
        token = self.sign(claims)
        return {"token": token, "access_token": token, "expires_in": self.expires_in,
                "issued_at": datetime.datetime.fromtimestamp(now, datetime.UTC).isoformat()}

    def sign(self, claims: dict[str, Any]) -> str:
        """A compact JWS (RS256) with the signing certificate in ``x5c``."""
        der = self._cert.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
        signing_input = (_b64(json.dumps(header).encode()) + "."
                         + _b64(json.dumps(claims).encode()))
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + _b64(signature)

    def token_for(self, user: str, *scopes: str) -> str:
        """A token as the issuer would hand it out, for test code talking to the registry."""
        return str(self.token_response(user, scopes)["token"])
