"""A container as Kubernetes or Docker would run the executor image: an OCI bundle under crun.

``run_image`` (runtime.py) runs a built image to look at it; this runs the *executor* image as
the builder, so the bundle is written from scratch the way container engines write one: the
image's rootfs, Docker's default capabilities (what a Kubernetes pod gets), bind mounts for the
context and the registry credentials, and no network namespace so the container reaches the
test registry on the host's loopback. The process is PID 1 of its own PID namespace.

crun runs in a private mount namespace with ``/sys/fs/cgroup/unified`` unmounted (crun 1.8.1
refuses this VM's hybrid cgroup layout), like every crun call of the test helpers.
"""

from __future__ import annotations

import json
import resource
import secrets
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.runtime import RunResult, require_tool

#: Docker's (and so containerd's and CRI-O's) default capability set.
DEFAULT_CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]


@dataclass(frozen=True)
class Bind:
    """A host directory or file bind-mounted into the container."""

    source: Path
    destination: str
    readonly: bool = False


@dataclass
class ContainerSpec:
    """What a pod's container spec says: args, env, working directory, mounts."""

    args: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    binds: Sequence[Bind] = ()
    cwd: str = "/workspace"
    #: An OCI ``linux.seccomp`` (tests/support/seccomp.py), as RuntimeDefault gives a pod.
    seccomp: dict[str, Any] | None = None
    #: The container's capabilities (default: Docker's default set).
    capabilities: Sequence[str] = tuple(DEFAULT_CAPABILITIES)


def _crun(args: Sequence[str]) -> list[str]:
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'umount /sys/fs/cgroup/unified 2>/dev/null; exec crun "$@"', "sh", *args]


def write_config(bundle: Path, rootfs: Path, spec: ContainerSpec) -> Path:
    """``bundle/config.json`` for ``spec`` over ``rootfs``; returns the bundle directory."""
    bundle.mkdir(parents=True, exist_ok=True)
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
    ]
    for bind in spec.binds:
        options = ["rbind", "rprivate"] + (["ro"] if bind.readonly else [])
        mounts.append({"destination": bind.destination, "type": "bind",
                       "source": str(bind.source), "options": options})
    caps = list(spec.capabilities)
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    config = {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": list(spec.args),
            "env": [f"{k}={v}" for k, v in spec.env.items()],
            "cwd": spec.cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            # Engines give 1048576; crun may not raise it past this process's own limit.
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}],
            "noNewPrivileges": False,
        },
        "root": {"path": str(rootfs), "readonly": False},
        "hostname": "kiln-executor",
        "mounts": mounts,
        "linux": {
            # No "network": the container shares the host's loopback and its registry.
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                              "/proc/sysrq-trigger"],
        },
    }
    if spec.seccomp is not None:
        config["linux"]["seccomp"] = spec.seccomp  # type: ignore[index]
    (bundle / "config.json").write_text(json.dumps(config, indent=2))
    return bundle


class Container:
    """One ``crun run`` of a bundle, in the foreground of a child process."""

    def __init__(self, bundle: Path) -> None:
        require_tool("crun", "crun")
        require_tool("unshare", "util-linux")
        self.bundle = bundle
        self.state = bundle / "crun-state"
        self.state.mkdir(exist_ok=True)
        self.id = f"kiln-executor-{secrets.token_hex(6)}"
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> Container:
        self.proc = subprocess.Popen(
            _crun(["--root", str(self.state), "run", "--bundle", str(self.bundle), self.id]),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        return self

    def kill(self, signum: int = signal.SIGTERM) -> None:
        """Send ``signum`` to the container's PID 1, as ``docker stop`` and the kubelet do."""
        subprocess.run(_crun(["--root", str(self.state), "kill", self.id, str(int(signum))]),
                       check=True, capture_output=True, timeout=30)

    def wait(self, timeout: float) -> RunResult:
        assert self.proc is not None
        stdout, stderr = self.proc.communicate(timeout=timeout)
        return RunResult(self.proc.returncode, stdout, stderr)

    def delete(self) -> None:
        """Remove the container whatever state it is in (kills what is still running)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
        subprocess.run(_crun(["--root", str(self.state), "delete", "-f", self.id]),
                       capture_output=True, check=False, timeout=30)

    def __enter__(self) -> Container:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.delete()


def run_container(bundle: Path, timeout: float = 300) -> RunResult:
    """Run the bundle to completion; the container is deleted whatever happens."""
    with Container(bundle) as container:
        return container.wait(timeout)
