"""Fixtures on real parts: a CNCF distribution registry, base images made here, crun."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.registry import Registry


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A plain-HTTP registry on a free loopback port, for the whole test session."""
    reg = Registry(tmp_path_factory.mktemp("registry")).start()
    try:
        yield reg
    finally:
        reg.stop()


# --- base images and runtimes (tests/support/images.py, runtime.py, containerd.py) ---------
# Imported here, not at the top, so this block can be appended without touching the lines above.
from tests.support.containerd import Containerd  # noqa: E402
from tests.support.images import (  # noqa: E402
    push_layout,
    write_busybox_layout,
    write_debian_layout,
)


@pytest.fixture(scope="session")
def busybox_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An OCI image layout holding the one-layer busybox image as tag ``latest``."""
    layout = tmp_path_factory.mktemp("busybox-layout") / "layout"
    write_busybox_layout(layout, "latest")
    return layout


@pytest.fixture(scope="session")
def busybox_image(registry: Registry, busybox_layout: Path) -> str:
    """``127.0.0.1:PORT/test/busybox:latest``: busybox-static, OCI media types, about 1 MB."""
    return push_layout(busybox_layout, "latest", f"{registry.host}/test/busybox:latest")


@pytest.fixture(scope="session")
def busybox_docker_image(registry: Registry, busybox_layout: Path) -> str:
    """The busybox image with Docker media types (schema 2): ``.../test/busybox-docker:latest``."""
    return push_layout(
        busybox_layout, "latest", f"{registry.host}/test/busybox-docker:latest", format="v2s2"
    )


@pytest.fixture(scope="session")
def debian_image(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> str:
    """``127.0.0.1:PORT/test/debian:bookworm``: debootstrap minbase, one layer, about 117 MB.

    The first session on a machine runs debootstrap (about 40 s); later ones reuse the layer
    cached under /var/cache/kiln-tests.
    """
    layout = tmp_path_factory.mktemp("debian-layout") / "layout"
    write_debian_layout(layout, "bookworm")
    return push_layout(layout, "bookworm", f"{registry.host}/test/debian:bookworm")


@pytest.fixture(scope="session")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:
    """A private containerd 1.6 daemon for the session: ``containerd.pull_and_run(ref, args)``."""
    with Containerd(tmp_path_factory.mktemp("containerd")) as daemon:
        yield daemon
