"""An HTTP proxy in front of a real registry that answers chosen requests with faults.

The registry itself never returns a 500 on demand, resets a connection half way through a
blob or stalls; this proxy does, for the first N requests matching a method and path, and
passes everything else through untouched. The ``Host`` header is kept as the client sent it, so
the registry's upload ``Location`` URLs point back at the proxy.

The faults (``Fault.action``):

- ``answer``: reply ``status`` with ``headers`` and ``body`` (a 500, a 429 with Retry-After).
- ``reset_request``: forward the request line, headers and half of the body to the registry,
  then reset both connections: an upload that breaks mid-way, as the registry sees it too.
- ``reset_response``: forward the request, send the client the headers and half of the body,
  then reset the connection (a download that breaks off).
- ``close_response``: like ``reset_response`` but close cleanly (a FIN): the client reads
  half the body and then the end of the stream, which urllib3 reports as ``IncompleteRead``.
- ``stall``: like ``reset_response`` but wait ``stall`` seconds (or until the proxy stops)
  before the reset: a registry that stops sending.
- ``hang``: read the request, forward nothing, answer nothing for ``stall`` seconds (or until
  the proxy stops), then reset: a registry that takes an upload and never replies.
- ``truncate``: answer with the first half of the body and a ``Content-Length`` that matches it.
- ``corrupt``: answer with the body's first byte changed (a wrong digest, same size).
- ``slow``: read the request body and send the answer's body in 64 KiB pieces, ``stall``
  seconds apart: a slow link, for progress lines of long transfers.
"""

from __future__ import annotations

import http.client
import http.server
import re
import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests

from tests.support.registry import free_port

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
               "proxy-authorization", "proxy-authenticate"}

ACTIONS = ("answer", "reset_request", "reset_response", "close_response", "stall", "hang",
           "truncate", "corrupt", "slow")
#: The piece a ``slow`` fault moves at a time.
SLOW_PIECE = 64 * 1024


@dataclass
class Fault:
    """Answer ``times`` requests matching ``method`` and ``path`` (a regex) with a fault."""

    method: str
    path: str
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    times: int = 1
    body: bytes = b""
    action: str = "answer"
    #: Seconds a ``stall`` lasts (it also ends when the proxy stops).
    stall: float = 30.0

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown fault action {self.action!r}")
        if self.action == "answer" and not self.status:
            raise ValueError("an 'answer' fault needs a status")


@dataclass
class FaultProxy:
    upstream: str
    faults: list[Fault] = field(default_factory=list)
    port: int = 0
    #: Every request seen, as (method, path, status answered); a fault that sends no status
    #: line is recorded with its action's name in place of a status.
    seen: list[tuple[str, str, int | str]] = field(default_factory=list)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        if not self.port:
            self.port = free_port()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port),
                                                       _handler_for(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def add(self, fault: Fault) -> Fault:
        """Add a fault while the proxy runs (the list is read under a lock)."""
        with self._lock:
            self.faults.append(fault)
        return fault

    def faults_left(self) -> int:
        """How many faulty answers are still to be given."""
        with self._lock:
            return sum(f.times for f in self.faults)

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.times > 0 and fault.method == method and re.search(fault.path, path):
                    fault.times -= 1
                    return fault
        return None

    def _record(self, method: str, path: str, status: int | str) -> None:
        with self._lock:
            self.seen.append((method, path, status))

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _reset(sock: socket.socket) -> None:
    """Close with an RST rather than a FIN: the peer sees ``connection reset by peer``."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass


def _handler_for(proxy: FaultProxy) -> type[http.server.BaseHTTPRequestHandler]:
    session = requests.Session()
    upstream = urlsplit(proxy.upstream)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _handle(self) -> None:
            fault = proxy._take_fault(self.command, self.path)
            if fault is not None and fault.action == "reset_request":
                self._reset_request()
                return
            length = int(self.headers.get("Content-Length") or 0)
            if fault is not None and fault.action == "slow":
                body = self._read_slowly(length, fault.stall)
            else:
                body = self.rfile.read(length) if length else b""
            if fault is not None and fault.action == "answer":
                proxy._record(self.command, self.path, fault.status)
                self._send(fault.status, list(fault.headers.items()), fault.body)
                return
            if fault is not None and fault.action == "hang":
                proxy._record(self.command, self.path, "hang")
                proxy._stopping.wait(fault.stall)
                self.close_connection = True
                _reset(self.connection)
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            answer = session.request(self.command, proxy.upstream + self.path, headers=headers,
                                     data=body, allow_redirects=False, timeout=60)
            content = answer.content
            kept = [(k, v) for k, v in answer.headers.items()
                    if k.lower() not in _HOP_BY_HOP | {"content-length", "content-encoding"}]
            if fault is None or self.command == "HEAD":
                proxy._record(self.command, self.path, answer.status_code)
                self._send(answer.status_code, kept, content)
                return
            proxy._record(self.command, self.path, fault.action)
            if fault.action == "slow":
                self._send(answer.status_code, kept, content, pause=fault.stall)
            elif fault.action == "truncate":
                self._send(answer.status_code, kept, content[:len(content) // 2])
            elif fault.action == "corrupt":
                flipped = bytes([content[0] ^ 0xFF]) + content[1:] if content else content
                self._send(answer.status_code, kept, flipped)
            else:  # reset_response, close_response, stall: the full length promised, half sent
                self._send(answer.status_code, kept, content[:len(content) // 2],
                           length=len(content))
                if fault.action == "stall":
                    proxy._stopping.wait(fault.stall)
                self.close_connection = True
                if fault.action != "close_response":
                    _reset(self.connection)

        def _send(self, status: int, headers: list[tuple[str, str]], body: bytes,
                  length: int | None = None, pause: float = 0.0) -> None:
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            self.end_headers()
            if self.command != "HEAD":
                for start in range(0, len(body), SLOW_PIECE if pause else max(len(body), 1)):
                    self.wfile.write(body[start:start + (SLOW_PIECE if pause else len(body))])
                    self.wfile.flush()
                    if pause:
                        proxy._stopping.wait(pause)
            self.wfile.flush()

        def _read_slowly(self, length: int, pause: float) -> bytes:
            pieces = []
            while length > 0:
                piece = self.rfile.read(min(SLOW_PIECE, length))
                if not piece:
                    break
                pieces.append(piece)
                length -= len(piece)
                proxy._stopping.wait(pause)
            return b"".join(pieces)

        def _reset_request(self) -> None:
            """Send the registry the headers and half the body, then drop both ends."""
            length = int(self.headers.get("Content-Length") or 0)
            half = self.rfile.read(length // 2) if length else b""
            proxy._record(self.command, self.path, "reset_request")
            conn = http.client.HTTPConnection(upstream.hostname or "127.0.0.1", upstream.port,
                                              timeout=30)
            try:
                conn.putrequest(self.command, self.path, skip_host=True,
                                skip_accept_encoding=True)
                for key, value in self.headers.items():
                    if key.lower() not in _HOP_BY_HOP:
                        conn.putheader(key, value)
                conn.endheaders()
                conn.send(half)
            finally:
                if conn.sock is not None:
                    _reset(conn.sock)
                conn.close()
            self.close_connection = True
            _reset(self.connection)

        do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _handle

    return Handler
