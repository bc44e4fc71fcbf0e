"""A private containerd (Debian's 1.6) for checking images the way Kubernetes nodes unpack them.

Kaniko's worst layer bugs (bad whiteouts, kaniko #2050 and #2308) passed every registry and
skopeo check and only showed when containerd pulled the image. An image that this containerd
pulls, unpacks with its own differ and runs is the strongest check the tests have.

The daemon gets its own root, state and socket below a work directory and runs in a private
mount namespace, where ``/sys/fs/cgroup/unified`` is unmounted (see runtime.py) and ``/run`` is a
fresh tmpfs: containerd 1.6 puts shim sockets under ``/run/containerd/s`` and ``ctr`` its stdio
FIFOs under ``/run/containerd/fifo`` whatever the config says, and neither may touch the host.
``ctr`` therefore runs in the daemon's namespace too (``nsenter``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from tests.support.runtime import RunResult, require_tool

#: Plugins that would write outside the work dir (``opt`` installs into /opt/containerd) or do
#: slow work the tests never need (CRI sets up CNI and a streaming server).
_DISABLED_PLUGINS = (
    "io.containerd.grpc.v1.cri",
    "io.containerd.internal.v1.opt",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.tracing.processor.v1.otlp",
)

# sh stays PID 1 of the namespace: shims daemonise and are re-parented to PID 1 when they
# exit, and containerd itself would leave them as zombies. dash's ``wait`` reaps any child.
_START_SCRIPT = """
umount /sys/fs/cgroup/unified 2>/dev/null
mount -t tmpfs -o mode=0755 kiln-containerd-run /run || exit 1
containerd --config "$1" &
daemon=$!
while kill -0 "$daemon" 2>/dev/null; do wait; done
"""


@dataclass
class Containerd:
    """A containerd daemon with everything below ``workdir``; use as a context manager."""

    workdir: Path
    namespace: str = field(default_factory=lambda: f"kiln-test-{secrets.token_hex(4)}")
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    daemon_pid: int | None = field(default=None, repr=False)

    @property
    def socket(self) -> Path:
        return self.workdir / "containerd.sock"

    @property
    def log_path(self) -> Path:
        return self.workdir / "containerd.log"

    def config_text(self) -> str:
        disabled = ", ".join(f'"{p}"' for p in _DISABLED_PLUGINS)
        return (
            "version = 2\n"
            f'root = "{self.workdir / "root"}"\n'
            f'state = "{self.workdir / "state"}"\n'
            f"disabled_plugins = [{disabled}]\n"
            "[grpc]\n"
            f'  address = "{self.socket}"\n'
            "[ttrpc]\n"
            f'  address = "{self.socket}.ttrpc"\n'
            "[debug]\n"
            '  address = ""\n'
            '  level = "warn"\n'
        )

    def start(self, timeout: float = 20.0) -> Containerd:
        for program, package in (("containerd", "containerd"), ("ctr", "containerd"),
                                 ("containerd-shim-runc-v2", "containerd"), ("runc", "runc"),
                                 ("unshare", "util-linux"), ("nsenter", "util-linux")):
            require_tool(program, package)
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Unix socket paths are limited to 107 bytes; fail here rather than with a bind error.
        if len(str(self.socket)) + len(".ttrpc") > 107:
            raise RuntimeError(f"containerd socket path too long for a unix socket: {self.socket}")
        config = self.workdir / "config.toml"
        config.write_text(self.config_text())
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "--pid", "--fork",
                 "--kill-child", "--mount-proc", "sh", "-c", _START_SCRIPT, "sh", str(config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"containerd exited at start:\n{self.log_path.read_text()}")
            if self.daemon_pid is None:
                self.daemon_pid = _find_daemon(self.process.pid)
            if self.daemon_pid is not None and self.socket.exists():
                probe = self._ctr(["version"], timeout=10)
                if probe.returncode == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(
            f"containerd did not answer on {self.socket} within {timeout}s:\n"
            f"{self.log_path.read_text()}"
        )

    def _ctr(self, args: Sequence[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run ``ctr args...`` in the daemon's mount namespace, where its FIFOs live."""
        if self.daemon_pid is None:
            raise RuntimeError("containerd is not running")
        return subprocess.run(
            ["nsenter", "--target", str(self.daemon_pid), "--mount", "--pid",
             "ctr", "--address", str(self.socket), "--namespace", self.namespace, *args],
            capture_output=True, text=True, check=False, timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def ctr(self, args: Sequence[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run ``ctr args...`` against this daemon; raise with ctr's output when it fails."""
        proc = self._ctr(args, timeout)
        if proc.returncode != 0:
            raise RuntimeError(
                f"ctr {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}"
            )
        return proc

    def pull(self, ref: str) -> None:
        """Pull and unpack ``ref`` (plain HTTP) into the native snapshotter."""
        self.ctr(["images", "pull", "--plain-http", "--snapshotter", "native", ref])

    def run(self, ref: str, args: Sequence[str] = (), *, timeout: float = 60) -> RunResult:
        """Run an already pulled ``ref`` with host networking and remove the container after."""
        container_id = f"kiln-test-{secrets.token_hex(6)}"
        try:
            proc = self._ctr(
                ["run", "--snapshotter", "native", "--rm", "--net-host", ref, container_id,
                 *args],
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            self._remove_container(container_id)
            raise
        return RunResult(proc.returncode, proc.stdout, proc.stderr)

    def pull_and_run(self, ref: str, args: Sequence[str] = (), *, timeout: float = 60) -> RunResult:
        """Pull ``ref`` and run it; ``args`` replace the image's command when given."""
        self.pull(ref)
        return self.run(ref, args, timeout=timeout)

    def _remove_container(self, container_id: str) -> None:
        self._ctr(["tasks", "kill", "--signal", "SIGKILL", container_id], timeout=10)
        for _ in range(50):
            if self._ctr(["tasks", "delete", container_id], timeout=10).returncode == 0:
                break
            time.sleep(0.1)
        self._ctr(["containers", "delete", container_id], timeout=10)

    def stop(self) -> None:
        """Remove leftover containers and stop the daemon.

        The daemon is PID 1 of its own PID namespace, so when it exits the kernel kills every
        shim and container process still in there: nothing can outlive ``stop``.
        """
        if self.process is None:
            return
        try:
            if self.process.poll() is None and self.daemon_pid is not None:
                listed = self._ctr(["containers", "list", "--quiet"], timeout=10)
                for container_id in listed.stdout.split():
                    self._remove_container(container_id)
        finally:
            if self.process.poll() is None and self.daemon_pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.daemon_pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                # unshare --kill-child takes the daemon, and with it the namespace, down too.
                self.process.kill()
                self.process.wait()
            self.process = None
            self.daemon_pid = None
            remove_cgroups(self.namespace)

    def __enter__(self) -> Containerd:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


def _find_daemon(unshare_pid: int) -> int | None:
    """The host PID of containerd: a child of the namespace's sh, itself unshare's child."""
    for init in _children(unshare_pid):
        for child in _children(init):
            with contextlib.suppress(OSError):
                if Path(f"/proc/{child}/comm").read_text().strip() == "containerd":
                    return child
    return None


def remove_cgroups(name: str, root: Path = Path("/sys/fs/cgroup")) -> None:
    """Remove the empty cgroup ``name`` runc created in each v1 hierarchy for a namespace.

    runc deletes a container's own cgroup but leaves the namespace's parent behind; rmdir only
    succeeds on a cgroup without processes or children, so nothing live is affected.
    """
    for hierarchy in root.iterdir() if root.is_dir() else ():
        with contextlib.suppress(OSError):
            (hierarchy / name).rmdir()
