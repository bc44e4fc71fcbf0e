"""Long layer transfers log their progress (bytes, rate) at intervals, one line at a time per
layer, through a proxy that moves the bytes slowly (64 KiB pieces, a pause between them)."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.fault_proxy import Fault, FaultProxy
from tests.support.kiln import ExecutorRun, run_executor_on, write_context
from tests.support.registry import Registry

pytestmark = pytest.mark.e2e

#: A read timeout of 4 s makes the heartbeat, and so the progress interval, 1 s.
ENV: dict[str, str | None] = {"KILN_REGISTRY_TIMEOUT": "4"}
LINE = re.compile(r"^INFO\[\d{4}\] Still (downloading|uploading) blob (sha256:\w{64}) "
                  r"(from|to) 127\.0\.0\.1:\d+: ([\d.]+) of ([\d.]+) MB at ([\d.]+) MB/s "
                  r"\((\d+)s so far\)$", re.MULTILINE)


@pytest.fixture
def proxy(registry: Registry) -> Iterator[FaultProxy]:
    with FaultProxy(registry.url) as fault_proxy:
        yield fault_proxy


def build(tmp_path: Path, proxy: FaultProxy, dockerfile: str) -> ExecutorRun:
    context = write_context(tmp_path / "context", dockerfile)
    return run_executor_on(str(context), tmp_path / "root", "--destination",
                           f"{proxy.host}/progress/app:1", "--insecure", "--insecure-pull",
                           env=ENV)


def progress(stderr: str, verb: str) -> dict[str, list[tuple[float, float, int]]]:
    """Per blob: (MB moved, MB/s, seconds so far) of each progress line."""
    out: dict[str, list[tuple[float, float, int]]] = defaultdict(list)
    for match in LINE.finditer(stderr):
        if match[1] == verb:
            out[match[2]].append((float(match[4]), float(match[6]), int(match[7])))
    return out


def test_a_slow_layer_download_logs_bytes_and_rate_about_once_a_second(
        tmp_path: Path, proxy: FaultProxy, registry: Registry, busybox_image: str) -> None:
    # A base with a 4 MB layer (the client counts what it reads 1 MiB at a time).
    big = write_context(tmp_path / "big", f"FROM {busybox_image}\n"
                        "RUN head -c 4000000 /dev/urandom > /big\n")
    made = run_executor_on(str(big), tmp_path / "big-root", "--destination",
                           f"{registry.host}/progress/big:1", "--insecure", "--insecure-pull")
    assert made.exit_code == 0, made.stderr
    manifest = requests.get(f"{registry.url}/v2/progress/big/manifests/1", timeout=10, headers={
        "Accept": "application/vnd.oci.image.manifest.v1+json"}).json()
    layer = manifest["layers"][-1]["digest"]
    proxy.add(Fault("GET", re.escape(layer), action="slow", stall=0.06))
    result = build(tmp_path, proxy, f"FROM {proxy.host}/progress/big:1\nRUN true\n")
    assert result.exit_code == 0, result.stderr
    lines = progress(result.stderr, "downloading")[layer]
    assert len(lines) >= 2, result.stderr
    moved = [mb for mb, _, _ in lines]
    assert moved == sorted(moved) and moved[-1] > 0
    assert any(rate > 0 for _, rate, _ in lines)
    seconds = [s for _, _, s in lines]
    assert len(set(seconds)) == len(seconds)  # never two lines of one layer in a second


def test_a_slow_layer_upload_logs_bytes_and_rate(tmp_path: Path, proxy: FaultProxy,
                                                busybox_image: str) -> None:
    proxy.add(Fault("PUT", r"/blobs/uploads/", action="slow", stall=0.06, times=99))
    result = build(tmp_path, proxy, f"FROM {busybox_image}\n"
                   "RUN head -c 4000000 /dev/urandom > /big\n")
    assert result.exit_code == 0, result.stderr
    uploads = progress(result.stderr, "uploading")
    assert uploads, result.stderr
    lines = max(uploads.values(), key=len)
    assert len(lines) >= 2, result.stderr
    assert lines[-1][0] > 0 and all(rate > 0 for _, rate, _ in lines)
    seconds = [s for _, _, s in lines]
    assert len(set(seconds)) == len(seconds)
    # The upload's progress replaces the "still waiting" lines for its PUT: one line at a time.
    assert "Still waiting for registry" not in result.stderr
