"""Extraction benchmarks: kiln's ``extract_layer`` against ``umoci raw unpack`` and GNU
``tar -x`` on the same gzip blobs, in one run.

Scenarios: ``extract-debian`` (the debootstrap bookworm minbase layer the tests use, about
120 MB and 6,600 entries) and ``extract-50k`` (a layer of 50,000 small files). Each tool
extracts into a fresh directory on the same filesystem (``--dir``; tmpfs by default so the
figure is the tools' own cost, not this VM's slow file creation).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from snapshot.compress import Compression, compressed_writer, open_decompressed
from snapshot.extract import extract_layer
from snapshot.ignore import IgnoreList
from tests.support.images import debian_layer, write_oci_layout_from_layers


def make_50k_layer(path: Path, files: int = 50_000) -> Path:
    """A gzip layer of ``files`` small files in 500 directories (deterministic)."""
    with open(path, "wb") as raw, compressed_writer(raw, Compression("gzip", None)) as out, \
            tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for d in range(files // 100):
            info = tarfile.TarInfo(f"data/d{d:03d}")
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
            tar.addfile(info)
            for f in range(100):
                body = f"{d}-{f}\n".encode()
                info = tarfile.TarInfo(f"data/d{d:03d}/f{f:03d}")
                info.size, info.mode, info.mtime = len(body), 0o644, 1_700_000_000
                tar.addfile(info, io.BytesIO(body))
    return path


def kiln_extract(blob: Path, target: Path, _layout: Path) -> None:
    with open(blob, "rb") as raw:
        extract_layer(target, open_decompressed(raw, "gzip"),
                      ignore=IgnoreList(root=target, paths=frozenset()), layer_name=blob.name)


def tar_extract(blob: Path, target: Path, _layout: Path) -> None:
    subprocess.run(["tar", "--same-owner", "-xpzf", str(blob), "-C", str(target)], check=True)


def umoci_extract(_blob: Path, target: Path, layout: Path) -> None:
    os.rmdir(target)  # umoci creates the bundle directory itself
    subprocess.run(["umoci", "raw", "unpack", "--image", f"{layout}:bench", str(target)],
                   check=True, capture_output=True)


TOOLS: dict[str, Callable[[Path, Path, Path], None]] = {
    "kiln": kiln_extract, "umoci": umoci_extract, "gnu-tar": tar_extract}


def measure_extraction(scenarios: list[str], runs: int, workdir: Path,
                       report: Callable[[str, str, float], None]) -> None:
    """Extract every scenario's blob with every tool ``runs`` times, alternating tools."""
    with tempfile.TemporaryDirectory(prefix="kiln-bench-extract-", dir=workdir) as scratch:
        tmp = Path(scratch)
        for scenario in scenarios:
            if scenario == "extract-debian":
                blob = debian_layer()
            else:
                blob = make_50k_layer(tmp / "50k.tar.gz")
            layout = tmp / f"{scenario}-layout"
            write_oci_layout_from_layers(layout, "bench", [blob], {})
            for run in range(runs):
                for tool, extract in TOOLS.items():
                    target = tmp / f"{scenario}-{tool}-{run}"
                    target.mkdir()
                    started = time.perf_counter()
                    extract(blob, target, layout)
                    report(scenario, tool, time.perf_counter() - started)
                    shutil.rmtree(target)


def default_workdir() -> Path:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
