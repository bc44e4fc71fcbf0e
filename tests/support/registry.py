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
                requests.get(f"{self.url}/v2/", timeout=1, verify=False)
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

    def tags(self, repository: str) -> list[str]:
        """The tags the registry holds for ``repository`` (empty when it has none)."""
        resp = requests.get(f"{self.url}/v2/{repository}/tags/list", timeout=10, verify=False)
        if resp.status_code == 404:
            return []
        resp.raise_for_status()
        return list(resp.json().get("tags") or [])
