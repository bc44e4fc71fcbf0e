"""Peak memory of pushing and pulling one big layer: ``python -m bench.push [--size-mib N]``.

The issue's bar: pushing a 2 GiB layer stays under 200 MB of peak RSS, because blobs stream
from disk and are never held in memory. This starts a real distribution registry on a loopback
port, writes an incompressible blob of ``--size-mib`` MiB in a temporary directory, pushes it
and pulls it back in a fresh interpreter, and prints that interpreter's peak RSS and throughput.
Everything it creates is removed afterwards.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = """
import json, resource, sys, time
from pathlib import Path
from executor.image.model import Descriptor, OCI_LAYER_GZIP
from executor.image.reference import ImageRef
from executor.registry.client import RegistryClient
from executor.registry.transport import TransportOptions

host, blob, digest, size = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
ref = ImageRef.parse(f"{host}/bench/push:latest")
desc = Descriptor(OCI_LAYER_GZIP, digest, size)
with RegistryClient(TransportOptions(insecure_registries=frozenset({host}))) as client:
    start = time.monotonic()
    client.push_blob(ref, desc, blob)
    pushed = time.monotonic() - start
    start = time.monotonic()
    client.fetch_blob(ref, desc, blob.with_name("pulled"))
    pulled = time.monotonic() - start
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"push_seconds": pushed, "pull_seconds": pulled, "peak_rss_mb": rss}))
"""


def write_blob(path: Path, size: int) -> str:
    """``size`` bytes of random data (so nothing can compress it away); returns its digest."""
    hasher = hashlib.sha256()
    chunk = 1 << 20
    with path.open("wb") as out:
        remaining = size
        while remaining:
            data = os.urandom(min(chunk, remaining))
            hasher.update(data)
            out.write(data)
            remaining -= len(data)
    return f"sha256:{hasher.hexdigest()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from tests.support.registry import Registry

    workdir = Path(tempfile.mkdtemp(prefix="kiln-bench-push-"))
    registry = Registry(workdir / "registry")
    try:
        registry.start()
        size = args.size_mib << 20
        blob = workdir / "blob"
        digest = write_blob(blob, size)
        proc = subprocess.run([sys.executable, "-c", _CHILD, registry.host, str(blob), digest,
                               str(size)], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return 1
        result = json.loads(proc.stdout)
        result["size_mib"] = args.size_mib
        if args.json:
            print(json.dumps(result))
        else:
            mib = args.size_mib
            print(f"push {mib} MiB: {result['push_seconds']:.1f}s "
                  f"({mib / result['push_seconds']:.0f} MiB/s); pull: "
                  f"{result['pull_seconds']:.1f}s ({mib / result['pull_seconds']:.0f} MiB/s); "
                  f"peak RSS {result['peak_rss_mb']:.0f} MB")
        return 0
    finally:
        registry.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
