"""A real CNCF distribution registry (Debian's ``docker-registry``) on a free loopback port.

Tests talk to the same registry software users run, never to a fake: a kiln image that this
registry stores and skopeo reads back is an image other tools accept.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Registry:
    """A running registry process; ``host`` is ``127.0.0.1:PORT`` as used in image references."""

    workdir: Path
    port: int = 0
    scheme: str = "http"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    htpasswd: Path | None = None
    #: CA bundle the registry checks client certificates against (mTLS: ``http.tls.clientcas``).
    client_cas: Path | None = None
    #: The certificate and key this fixture presents itself (readiness probe, ``tags``).
    client_cert: tuple[Path, Path] | None = None
    extra_config: str = ""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def config_text(self) -> str:
        lines = [
            "version: 0.1",
            "log:",
            "  level: warn",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {self.workdir / 'data'}",
            "  delete:",
            "    enabled: true",
            "http:",
            f"  addr: 127.0.0.1:{self.port}",
            f"  secret: {secrets.token_hex(16)}",
        ]
        if self.tls_cert and self.tls_key:
            lines += ["  tls:", f"    certificate: {self.tls_cert}", f"    key: {self.tls_key}"]
            if self.client_cas:
                lines += ["    clientcas:", f"      - {self.client_cas}"]
        if self.htpasswd:
            lines += ["auth:", "  htpasswd:", "    realm: kiln-test", f"    path: {self.htpasswd}"]
        return "\n".join(lines) + "\n" + self.extra_config

    def start(self) -> Registry:
        if shutil.which("docker-registry") is None:
            raise RuntimeError("docker-registry is not installed (apt-get install docker-registry)")
        if not self.port:
            self.port = free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "config.yml"
        config.write_text(self.config_text())
        log = open(self.workdir / "registry.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(
            ["docker-registry", "serve", str(config)],
            stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "OTEL_TRACES_EXPORTER": "none"},
        )
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                log_text = (self.workdir / "registry.log").read_text()
                raise RuntimeError(f"registry exited: {log_text}")
            try:
                requests.get(f"{self.url}/v2/", timeout=1, verify=False, cert=self._cert())
                return
            except requests.RequestException:
                time.sleep(0.05)
        raise RuntimeError(f"registry on {self.host} did not start within {timeout}s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def _cert(self) -> tuple[str, str] | None:
        return (str(self.client_cert[0]), str(self.client_cert[1])) if self.client_cert else None

    def kill(self) -> None:
        """SIGKILL, as when a registry's machine dies mid-request; ``start()`` brings it back."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def tags(self, repository: str, *, authorization: str | None = None) -> list[str]:
        """The tags the registry holds for ``repository`` (empty when it has none)."""
        headers = {"Authorization": authorization} if authorization else {}
        resp = requests.get(f"{self.url}/v2/{repository}/tags/list", timeout=10, verify=False,
                            cert=self._cert(), headers=headers)
        if resp.status_code == 404:
            return []
        resp.raise_for_status()
        return list(resp.json().get("tags") or [])


# --- TLS and credentials for the secured registries -------------------------------------------


@dataclass(frozen=True)
class TLSFiles:
    """PEM files from one test CA: the CA, a server certificate for 127.0.0.1, a client one."""

    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path
    #: A directory in the layout skopeo's ``--cert-dir`` wants (``ca.crt``, ``client.cert``, ...).
    cert_dir: Path


def write_tls_files(directory: Path) -> TLSFiles:
    """A fresh ``trustme`` CA and the certificates it issues, written under ``directory``."""
    import trustme

    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    files = TLSFiles(directory / "ca.pem", directory / "server.pem", directory / "server-key.pem",
                     directory / "client.pem", directory / "client-key.pem",
                     directory / "cert-dir")
    ca.cert_pem.write_to_path(str(files.ca))
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.private_key_pem.write_to_path(str(files.key))
    for i, pem in enumerate(server.cert_chain_pems):
        pem.write_to_path(str(files.cert), append=i > 0)
    client = ca.issue_cert("kiln-client@example.com")
    client.private_key_pem.write_to_path(str(files.client_key))
    client.cert_chain_pems[0].write_to_path(str(files.client_cert))
    files.cert_dir.mkdir()
    shutil.copy(files.ca, files.cert_dir / "ca.crt")
    shutil.copy(files.client_cert, files.cert_dir / "client.cert")
    shutil.copy(files.client_key, files.cert_dir / "client.key")
    return files


def write_htpasswd(path: Path, users: dict[str, str]) -> Path:
    """An htpasswd file with bcrypt entries (the only kind distribution accepts)."""
    lines = []
    for user, password in users.items():
        proc = subprocess.run(["htpasswd", "-Bbn", user, password], capture_output=True,
                              text=True, check=True)
        lines.append(proc.stdout.strip())
    path.write_text("\n".join(lines) + "\n")
    return path
