"""The executor image of Dockerfile.executor, built by kiln for the tests, and what runs in it.

The public base names of Dockerfile.executor (``debian:bookworm-slim``) are mapped with
``--registry-map`` to the debootstrap minbase the tests push under ``REG/hub``; the build stage
reaches deb.debian.org and PyPI as ``docker build`` would.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.kiln import run_executor
from tests.support.registry import Registry

REPO = Path(__file__).resolve().parents[2]
HUB_MIRROR = "hub"
LOCAL_CAS = Path("/usr/local/share/ca-certificates")


def local_ca_certificates() -> str:
    """The CAs this machine adds to Debian's (``/usr/local/share/ca-certificates``), as PEM.

    The build stage fetches from PyPI over HTTPS; where the network goes through a
    TLS-intercepting proxy, pip inside the build needs its CA, exactly as on this host.
    """
    return "".join(p.read_text() for p in sorted(LOCAL_CAS.glob("*.crt")))


def build_executor_image(registry: Registry, hub_map: str, workdir: Path, target: str | None,
                         tag: str) -> str:
    dest = f"{registry.host}/kiln/executor:{tag}"
    args = ["--build-arg", f"EXTRA_CA_CERTS={local_ca_certificates()}",
            "--registry-map", hub_map, "--insecure", "--insecure-pull", "--destination", dest]
    if target:
        args += ["--target", target]
    result = run_executor(REPO, workdir / "root", *args, dockerfile="Dockerfile.executor",
                          timeout=900)
    assert result.exit_code == 0, result.stderr[-5000:]
    return dest


def docker_config(directory: Path, registry: Registry) -> Path:
    """A ``/kaniko/.docker`` with a config.json naming the test registry."""
    directory.mkdir(parents=True, exist_ok=True)
    auths = {registry.host: {"auth": "a2lsbjpraWxu"}}  # kiln:kiln; the test registry ignores it
    (directory / "config.json").write_text(json.dumps({"auths": auths}))
    return directory


BUSYBOX_DOCKERFILE = """\
FROM {base}
RUN echo "built in place by $(cat /proc/1/comm 2>/dev/null || echo kiln)" > /built.txt \\
    && busybox | head -n 1 | cut -d ' ' -f 1 >> /built.txt
CMD ["cat", "/built.txt"]
"""

DEBIAN_DOCKERFILE = """\
FROM {base}
RUN dpkg-query -W -f '${{Package}} ${{Status}}\\n' dpkg bash > /packages.txt \\
    && sh -c 'echo "sh says: $(readlink -f /bin/sh)"' >> /packages.txt
CMD ["cat", "/packages.txt"]
"""


def write_dockerfile(directory: Path, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "Dockerfile").write_text(text)
    return directory


def busybox_dockerfile(directory: Path, base: str) -> Path:
    """A context whose RUN writes who ran it; the image prints it."""
    return write_dockerfile(directory, BUSYBOX_DOCKERFILE.format(base=base))
