"""Fixtures of the end-to-end tests that share the executor image (built once per session)."""

from __future__ import annotations

import subprocess

import pytest

from tests.support.executor_image import HUB_MIRROR, build_executor_image
from tests.support.registry import Registry
from tests.support.runtime import require_tool


@pytest.fixture(scope="session")
def hub_mirror(registry: Registry, debian_image: str) -> str:
    """``docker.io`` as kiln sees it with ``--registry-map``: the test images under /hub."""
    require_tool("skopeo", "skopeo")
    for name in ("debian:bookworm-slim", "debian:bookworm"):
        subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                        "--dest-tls-verify=false", f"docker://{debian_image}",
                        f"docker://{registry.host}/{HUB_MIRROR}/library/{name}"],
                       check=True, capture_output=True)
    return f"docker.io={registry.host}/{HUB_MIRROR}"


@pytest.fixture(scope="session")
def executor_image(registry: Registry, hub_mirror: str,
                   tmp_path_factory: pytest.TempPathFactory) -> str:
    """``REG/kiln/executor:debug``: Dockerfile.executor's debug target, built by kiln."""
    return build_executor_image(registry, hub_mirror, tmp_path_factory.mktemp("executor-image"),
                                "debug", "debug")




@pytest.fixture(scope="session")
def plain_executor_image(registry: Registry, hub_mirror: str,
                         tmp_path_factory: pytest.TempPathFactory) -> str:
    """``REG/kiln/executor:latest``: what ``docker build -f Dockerfile.executor .`` makes."""
    return build_executor_image(registry, hub_mirror, tmp_path_factory.mktemp("executor-plain"),
                                None, "latest")
