"""The guard on in-place mode: building over ``/`` is only for a throwaway container.

In-place mode overwrites this process's root filesystem with the base image. kaniko refuses it
outside a container unless ``--force``; kiln also refuses it when the executor itself does not
live under the kiln directory, because extracting a base image over ``/`` would then replace the
Python interpreter and libraries the running executor still needs (kaniko #2764). That second
check is what keeps a developer machine that happens to look like a container (``/.dockerenv``)
from being wiped by a missing ``--root``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from executor.errors import OptionsError

_CONTAINER_MARKER_FILES = (".dockerenv", "run/.containerenv")
_CONTAINER_CGROUP_MARKERS = ("docker", "kubepods", "containerd", "crio", "libpod", "lxc",
                             "buildkit", "actions_job")


def running_in_container() -> bool:
    """True when this process looks like it runs in a container (kaniko's checks)."""
    # ``container`` (lower case) is the variable systemd-nspawn and podman set.
    if os.environ.get("container") or Path("/.dockerenv").exists():  # noqa: SIM112
        return True
    if Path("/run/.containerenv").exists() or Path("/var/run/secrets/kubernetes.io").exists():
        return True
    # The kubelet gives every container this variable, also with no service-account token
    # mounted and on cgroup v2 nodes, whose private cgroup namespace hides "kubepods" below.
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return True
    try:
        cgroups = Path("/proc/1/cgroup").read_text()
    except OSError:
        return False
    return any(marker in cgroups for marker in _CONTAINER_CGROUP_MARKERS)


def executor_is_self_contained(kiln_dir: Path) -> bool:
    """True when the interpreter running kiln lives under ``kiln_dir`` (the executor image)."""
    try:
        return Path(sys.executable).resolve().is_relative_to(kiln_dir.resolve())
    except OSError:
        return False


def executor_image_paths(root: Path) -> list[str]:
    """Paths of the executor image, besides the kiln dir, that an in-place build leaves alone.

    The debug image's shell lives in ``/busybox`` (Dockerfile.executor, target ``debug``), so a
    CI job's shell keeps working across builds; kaniko's debug image declares it a VOLUME for
    that, which Kubernetes does not honour, so kiln ignores it by name when it is there.

    The marker files that say "this is a container" (``/.dockerenv``, which Docker and so a
    GitLab runner create in the root, and podman's ``/run/.containerenv``) stay too: the first
    build would otherwise delete them, and the next build of the same job would refuse to run.
    """
    paths = ["/busybox"] if (root / "busybox" / "busybox").is_file() else []
    return paths + [f"/{name}" for name in _CONTAINER_MARKER_FILES if (root / name).exists()]


def check_in_place_allowed(kiln_dir: Path, force: bool) -> None:
    """Refuse an in-place build where it would wreck the machine it runs on."""
    if force:
        return
    if not running_in_container():
        raise OptionsError("kiln should only be run inside of a container, run with the "
                           "--force flag if you are sure you want to continue")
    if not executor_is_self_contained(kiln_dir):
        raise OptionsError(
            f"refusing to build in place over /: this executor ({sys.executable}) is not "
            f"installed under {kiln_dir}, so extracting the base image would overwrite it; "
            "use --root DIR to build in a directory, or --force")
