"""Servers a remote build context comes from, on loopback: the real ones where they install.

- ``GitDaemon``: ``git daemon``, the git protocol (``GIT_PULL_METHOD=git``).
- ``ContextServer``: a small HTTP(S) server that serves files, fronts ``git http-backend`` (git's
  own smart-HTTP server, as Apache or nginx would run it), answers Cloud Storage's JSON API
  download path as ``STORAGE_EMULATOR_HOST``, and can demand basic auth.
- ``MotoS3``: moto's S3 server (``python -m moto.server``), a real HTTP S3 implementation;
  MinIO would be closer to production but is neither on PyPI nor in Debian.

Each is a context manager and stops what it started.
"""

from __future__ import annotations

import base64
import http.server
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.registry import TLSFiles, free_port
from tests.support.runtime import require_tool


def wait_for_port(port: int, proc: subprocess.Popen[bytes] | None = None,
                  timeout: float = 20) -> None:
    """Return once something accepts connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class GitDaemon:
    """``git daemon`` exporting every repository under ``root`` on a free loopback port."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``git://127.0.0.1:PORT``; repositories are ``{url}/NAME.git``."""
        return f"git://127.0.0.1:{self.port}"

    def __enter__(self) -> GitDaemon:
        git = require_tool("git", "git")
        self._proc = subprocess.Popen(
            [git, "daemon", "--reuseaddr", "--export-all", "--informative-errors",
             f"--base-path={self.root}", "--listen=127.0.0.1", f"--port={self.port}",
             str(self.root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, self._proc)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            _stop(self._proc)


class ContextServer:
    """Files, ``git http-backend`` and a Cloud Storage download path over HTTP or HTTPS.

    - ``/files/PATH``: the file ``files/PATH``;
    - ``/git/REPO.git/...``: ``git http-backend`` over the repositories in ``git_root``;
    - ``/download/storage/v1/b/BUCKET/o/OBJECT?alt=media``: the file ``files/BUCKET/OBJECT``.
    """

    def __init__(self, files: Path, git_root: Path | None = None, *, tls: TLSFiles | None = None,
                 credentials: tuple[str, str] | None = None) -> None:
        self.files = files
        self.git_root = git_root
        self.tls = tls
        self.credentials = credentials
        self.port = free_port()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def __enter__(self) -> ContextServer:
        if self.git_root is not None:
            require_tool("git", "git")
        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), _handler(self))
        server.daemon_threads = True
        if self.tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(self.tls.cert), str(self.tls.key))
            server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)


def _handler(owner: ContextServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self._serve()

        def do_POST(self) -> None:
            self._serve()

        def _serve(self) -> None:
            if owner.credentials is not None and not self._authorised(owner.credentials):
                self._reply(401, b"authentication required\n",
                            {"WWW-Authenticate": 'Basic realm="kiln-tests"'})
                return
            parts = urllib.parse.urlsplit(self.path)
            path = urllib.parse.unquote(parts.path)
            if path.startswith("/git/") and owner.git_root is not None:
                self._git(path[len("/git"):], parts.query)
            elif path.startswith("/files/"):
                self._file(owner.files / path[len("/files/"):])
            elif path.startswith("/download/storage/v1/b/"):
                bucket, _, name = parts.path[len("/download/storage/v1/b/"):].partition("/o/")
                self._file(owner.files / urllib.parse.unquote(bucket)
                           / urllib.parse.unquote(name))
            else:
                self._reply(404, b"not found\n")

        def _authorised(self, credentials: tuple[str, str]) -> bool:
            header = self.headers.get("Authorization", "")
            expected = base64.b64encode(":".join(credentials).encode()).decode()
            return header == f"Basic {expected}"

        def _file(self, path: Path) -> None:
            resolved = path.resolve()
            if not resolved.is_relative_to(owner.files.resolve()) or not resolved.is_file():
                self._reply(404, b"not found\n")
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(resolved.stat().st_size))
            self.end_headers()
            with open(resolved, "rb") as f:
                while chunk := f.read(1 << 20):
                    self.wfile.write(chunk)

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                out = bytearray()
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        self.rfile.readline()
                        return bytes(out)
                    out += self.rfile.read(size)
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _git(self, path_info: str, query: str) -> None:
            body = self._body()
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                   "GIT_PROJECT_ROOT": str(owner.git_root), "GIT_HTTP_EXPORT_ALL": "1",
                   "PATH_INFO": path_info, "QUERY_STRING": query,
                   "REQUEST_METHOD": self.command, "REMOTE_ADDR": "127.0.0.1",
                   "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                   "CONTENT_LENGTH": str(len(body))}
            if owner.credentials is not None:
                env["REMOTE_USER"] = owner.credentials[0]
            if self.headers.get("Content-Encoding"):
                env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
            if self.headers.get("Git-Protocol"):
                env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
            proc = subprocess.run(["git", "http-backend"], input=body, env=env,
                                  capture_output=True, check=False)
            separator = b"\r\n\r\n" if b"\r\n\r\n" in proc.stdout else b"\n\n"
            head, _, content = proc.stdout.partition(separator)
            status, headers = 200, {}
            for line in head.decode("latin-1").splitlines():
                key, _, value = line.partition(":")
                if key.lower() == "status":
                    status = int(value.strip().split()[0])
                elif key:
                    headers[key] = value.strip()
            self._reply(status, content, headers)

        def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                if key.lower() != "content-length":
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


class MotoS3:
    """moto's S3 server on a free loopback port; ``client()`` is a boto3 client for it."""

    ACCESS_KEY, SECRET_KEY = "kiln-test-key", "kiln-test-secret"

    def __init__(self) -> None:
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> MotoS3:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_port(self.port, self._proc, timeout=60)
        except BaseException:
            _stop(self._proc)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            _stop(self._proc)

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.ACCESS_KEY,
                            aws_secret_access_key=self.SECRET_KEY)


@dataclass(frozen=True)
class GitRepositories:
    """The bare repositories ``write_test_repositories`` made, and the commits that matter."""

    root: Path
    #: main's first commit (tagged ``v1``) and its second (main's tip).
    first: str
    second: str
    feature: str


APP_DOCKERFILE = """\
ARG BASE
FROM $BASE
COPY . /ctx/
CMD ["sh", "-c", "cat /ctx/version.txt; ls -a /ctx | tr '\\\\n' ' '"]
"""
SUB_DOCKERFILE = """\
ARG BASE
FROM $BASE
COPY . /app/
CMD ["sh", "-c", "cat /app/hello.txt /app/lib/lib.txt"]
"""


def write_test_repositories(root: Path) -> GitRepositories:
    """``root/app.git`` and ``root/lib.git``, bare, served by the servers above.

    app.git: main has two commits (``version.txt`` one, then two; the first is tagged ``v1``),
    branch ``feature`` says feature; a ``.dockerignore`` leaves out ``.git`` and ``secret.txt``;
    ``app/`` is a second context (sub-path) whose ``lib/`` is the submodule ``../lib.git``.
    """
    git = require_tool("git", "git")
    env = {**os.environ, "GIT_AUTHOR_NAME": "kiln", "GIT_AUTHOR_EMAIL": "kiln@example.com",
           "GIT_COMMITTER_NAME": "kiln", "GIT_COMMITTER_EMAIL": "kiln@example.com",
           "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}

    def run(*args: str, cwd: Path) -> str:
        return subprocess.run([git, *args], cwd=cwd, env=env, check=True, capture_output=True,
                              text=True).stdout.strip()

    def commit(work: Path, files: dict[str, str], message: str, gitlink: str = "") -> str:
        for rel, text in files.items():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            (work / rel).write_text(text)
        run("add", "-A", cwd=work)
        if gitlink:  # no checkout of the submodule here, so "add -A" dropped it: put it back
            run("update-index", "--add", "--cacheinfo", gitlink, cwd=work)
        run("commit", "-q", "-m", message, cwd=work)
        return run("rev-parse", "HEAD", cwd=work)

    root.mkdir(parents=True, exist_ok=True)
    lib_work = root / "lib-work"
    lib_work.mkdir()
    run("init", "-q", "-b", "main", cwd=lib_work)
    lib_commit = commit(lib_work, {"lib.txt": "from the submodule\n"}, "lib")
    run("clone", "-q", "--bare", str(lib_work), str(root / "lib.git"), cwd=root)

    work = root / "app-work"
    work.mkdir()
    run("init", "-q", "-b", "main", cwd=work)
    (work / ".gitmodules").write_text('[submodule "app/lib"]\n\tpath = app/lib\n'
                                      "\turl = ../lib.git\n")
    gitlink = f"160000,{lib_commit},app/lib"
    first = commit(work, {"Dockerfile": APP_DOCKERFILE, "version.txt": "one\n",
                          ".dockerignore": ".git\nsecret.txt\n", "secret.txt": "secret\n",
                          "app/Dockerfile": SUB_DOCKERFILE,
                          "app/hello.txt": "hello from app/\n"}, "one",
                   gitlink=gitlink)
    run("tag", "v1", cwd=work)
    second = commit(work, {"version.txt": "two\n"}, "two", gitlink)
    run("checkout", "-q", "-b", "feature", first, cwd=work)
    feature = commit(work, {"version.txt": "feature\n"}, "feature", gitlink)
    run("checkout", "-q", "main", cwd=work)
    run("clone", "-q", "--bare", "--no-local", str(work), str(root / "app.git"), cwd=root)
    run("fetch", "-q", str(work), "feature:feature", "refs/tags/v1:refs/tags/v1",
        cwd=root / "app.git")
    return GitRepositories(root, first, second, feature)
