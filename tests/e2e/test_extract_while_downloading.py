"""A base layer is extracted while it downloads, not after (issue 15: download and extraction
overlap), through a proxy that moves its bytes slowly or cuts them off half way."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.fault_proxy import Fault, FaultProxy
from tests.support.kiln import write_context
from tests.support.registry import Registry
from tests.support.runtime import run_image

pytestmark = pytest.mark.e2e

FAST = {"KILN_REGISTRY_RETRIES": "2", "KILN_REGISTRY_BACKOFF": "0.1", "KILN_REGISTRY_TIMEOUT": "4"}


@pytest.fixture
def proxy(registry: Registry) -> Iterator[FaultProxy]:
    with FaultProxy(registry.url) as fault_proxy:
        yield fault_proxy


def base_layer(registry: Registry) -> str:
    manifest = requests.get(f"{registry.url}/v2/test/busybox/manifests/latest", timeout=10,
                            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    manifest.raise_for_status()
    return str(manifest.json()["layers"][0]["digest"])


def command(tmp_path: Path, proxy: FaultProxy, destination: str) -> list[str]:
    context = write_context(tmp_path / "context", f"FROM {proxy.host}/test/busybox:latest\n"
                            "RUN echo made > /made.txt\n")
    return [sys.executable, "-m", "executor.cli", "--context", str(context),
            "--root", str(tmp_path / "root"), "--kaniko-dir", str(tmp_path / "kiln"),
            "--destination", destination, "--insecure", "--insecure-pull"]


def test_the_root_fills_while_the_base_layer_is_still_downloading(
        tmp_path: Path, proxy: FaultProxy, registry: Registry, busybox_image: str) -> None:
    # 64 KiB every 0.1 s: the busybox layer (about 1 MB) takes over a second and a half.
    proxy.add(Fault("GET", re.escape(base_layer(registry)), action="slow", stall=0.1))
    root_seen: list[float] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if (tmp_path / "root" / "bin").exists():
                root_seen.append(time.monotonic())
                return
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    proc = subprocess.Popen(command(tmp_path, proxy, f"{registry.host}/stream/app:1"),
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    pulled_at, log = None, []
    assert proc.stderr is not None
    for line in proc.stderr:
        log.append(line)
        if pulled_at is None and "Pulled layer" in line:
            pulled_at = time.monotonic()
    done.set()
    watcher.join()
    assert proc.wait() == 0, "".join(log)
    assert pulled_at is not None and root_seen, "".join(log)
    assert pulled_at - root_seen[0] > 0.5, "".join(log)
    ran = run_image(f"{registry.host}/stream/app:1", ["cat", "/made.txt"],
                    workdir=tmp_path / "run")
    assert (ran.exit_code, ran.stdout.strip()) == (0, "made"), ran.stderr


@pytest.mark.parametrize("action", ["reset_response", "close_response"])
def test_a_download_cut_off_mid_layer_is_extracted_again_from_the_whole_blob(
        tmp_path: Path, proxy: FaultProxy, registry: Registry, busybox_image: str,
        action: str) -> None:
    # The first attempt sends half the layer slowly enough to be extracted as it comes, then
    # breaks off; the retry downloads it whole, and the root must hold that, not the half.
    layer = re.escape(base_layer(registry))
    proxy.add(Fault("GET", layer, action=action))
    destination = f"{registry.host}/stream/cut-{action}:1"
    result = subprocess.run(command(tmp_path, proxy, destination), capture_output=True,
                            text=True, timeout=180, env={**os.environ, **FAST})
    assert result.returncode == 0, result.stderr
    assert "Retrying download of blob" in result.stderr
    assert "Traceback" not in result.stderr
    listing = "cat /made.txt 2>/dev/null; ls -l /bin | md5sum"
    ran = run_image(destination, ["sh", "-c", listing], workdir=tmp_path / "run")
    base = run_image(busybox_image, ["sh", "-c", listing], workdir=tmp_path / "base")
    assert ran.exit_code == 0 and base.exit_code == 0, ran.stderr + base.stderr
    made, bin_listing = ran.stdout.split("\n", 1)
    assert made == "made"
    assert bin_listing == base.stdout  # busybox's whole /bin, not what half a layer held
