"""BuildKit, Docker's builder, as the reference: what it builds from a Dockerfile is what
``docker build`` gives, so the conformance fixtures are made by it.

Nothing of BuildKit is part of this repository: a developer builds ``buildkitd`` and ``buildctl``
from BuildKit's own source (v0.32) in a scratch directory and points kiln at them, either at a
daemon that already runs (``BUILDKIT_HOST=unix:///...sock``) or at the binaries
(``KILN_BUILDKITD`` / ``KILN_BUILDCTL``, else ``PATH``), in which case a private daemon is started
here: inside ``unshare --mount --pid`` so that its mounts and every process it starts vanish with
it, with its own root, the OCI worker and ``runc``, and the host's network (the test registry
listens on loopback, which BuildKit reaches over plain HTTP by itself). A daemon of your own
needs ``--allow-insecure-entitlement network.host`` for ``RUN --network=host``.
CI never needs BuildKit: it compares kiln's images with the committed fixtures.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

#: A daemon's config: no CDI (three warnings otherwise), the OCI worker only.
_DAEMON_CONFIG = """\
[cdi]
  disabled = true
[worker.oci]
  enabled = true
  snapshotter = "overlayfs"
[worker.containerd]
  enabled = false
"""


#: BuildKit's worker, ref and vertex ids: 25 lowercase letters and digits.
_VOLATILE_ID = re.compile(r"\b(?=[a-z0-9]*[0-9])(?=[a-z0-9]*[a-z])[a-z0-9]{25}\b")


class BuildKitMissing(RuntimeError):
    """BuildKit is not installed where kiln looks for it."""


def find_tool(name: str, env_var: str) -> str:
    """The path of ``name``: ``$env_var`` if set, else ``PATH``; a clear error if neither."""
    path = os.environ.get(env_var) or shutil.which(name)
    if not path or not os.access(path, os.X_OK):
        raise BuildKitMissing(
            f"{name} not found: build BuildKit v0.32 from its source in a scratch directory and "
            f"put {name} on PATH or name it in ${env_var} (see tests/conformance/README.md)")
    return path


@dataclass(frozen=True)
class BuildKitResult:
    """How a BuildKit build ended: exit code and output."""

    exit_code: int
    output: str

    @property
    def error_line(self) -> str:
        """BuildKit's own summary of a failure (``ERROR: failed to solve: ...``)."""
        lines = [line.strip() for line in self.output.splitlines() if line.strip()]
        found = next((line for line in reversed(lines) if line.startswith(("ERROR:", "error:"))),
                     lines[-1] if lines else "")
        # Worker and snapshot ids change with every daemon; a fixture should not.
        return _VOLATILE_ID.sub("<id>", found)


class BuildKit:
    """A BuildKit daemon to build with: the one at ``BUILDKIT_HOST``, or a private one.

    Use as a context manager; a private daemon is stopped, with everything it started, on exit.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.buildctl = find_tool("buildctl", "KILN_BUILDCTL")
        self.address = os.environ.get("BUILDKIT_HOST", "")
        self._daemon: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> BuildKit:
        if not self.address:
            self._start_daemon()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._daemon is not None:
            self._daemon.send_signal(signal.SIGTERM)
            try:
                self._daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._daemon.kill()
                self._daemon.wait()
            shutil.rmtree(self.workdir / "root", ignore_errors=True)

    def _start_daemon(self) -> None:
        buildkitd = find_tool("buildkitd", "KILN_BUILDKITD")
        if shutil.which("runc") is None:
            raise BuildKitMissing("runc not found: BuildKit's OCI worker runs steps with runc")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "buildkitd.toml"
        config.write_text(_DAEMON_CONFIG)
        socket = self.workdir / "buildkitd.sock"
        self.address = f"unix://{socket}"
        log = (self.workdir / "buildkitd.log").open("wb")
        self._daemon = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--pid", "--fork",
             "--kill-child=TERM", "--mount-proc", buildkitd, "--config", str(config),
             "--root", str(self.workdir / "root"), "--addr", self.address,
             "--oci-worker-net=host", "--allow-insecure-entitlement", "network.host"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._daemon.poll() is not None:
                raise BuildKitMissing(f"buildkitd exited: see {self.workdir / 'buildkitd.log'}")
            probe = subprocess.run([self.buildctl, "--addr", self.address, "debug", "workers"],
                                   capture_output=True, check=False, stdin=subprocess.DEVNULL)
            if probe.returncode == 0:
                return
            time.sleep(0.3)
        raise BuildKitMissing(f"buildkitd did not answer within 60 s at {self.address}")

    def prune(self) -> None:
        """Empty the daemon's build cache, so the next build starts cold (as kiln's do)."""
        subprocess.run([self.buildctl, "--addr", self.address, "prune", "--all"],
                       capture_output=True, check=False, stdin=subprocess.DEVNULL, timeout=300)

    def build_push(self, context: Path, dockerfile: Path, dest: str, *,
                   build_args: Mapping[str, str] | None = None, target: str | None = None,
                   secrets: Mapping[str, Path] | None = None, extra_args: Sequence[str] = (),
                   timeout: float = 300) -> BuildKitResult:
        """Build ``dockerfile`` with ``context`` and push the image to ``dest`` (plain HTTP)."""
        args = [self.buildctl, "--addr", self.address, "build", "--progress", "plain",
                "--frontend", "dockerfile.v0", "--local", f"context={context}",
                "--local", f"dockerfile={dockerfile.parent}", "--opt",
                f"filename={dockerfile.name}"]
        for key, value in (build_args or {}).items():
            args += ["--opt", f"build-arg:{key}={value}"]
        if target:
            args += ["--opt", f"target={target}"]
        for sid, src in (secrets or {}).items():
            args += ["--secret", f"id={sid},src={src}"]
        # RUN --network=host needs the entitlement (the daemon must allow it too).
        args += ["--allow", "network.host", *extra_args, "--output",
                 f"type=image,name={dest},push=true,registry.insecure=true"]
        try:
            proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                                  check=False, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            partial = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr or ""
            return BuildKitResult(124, f"{partial}\nERROR: timed out after {timeout} s")
        return BuildKitResult(proc.returncode, proc.stderr + proc.stdout)


def strip_syntax_directive(dockerfile: Path) -> None:
    """Drop a leading ``# syntax=`` line: BuildKit would pull that frontend from the internet."""
    lines = dockerfile.read_text(errors="surrogateescape").splitlines(keepends=True)
    out = []
    in_directives = True
    for line in lines:
        key = line.strip().lstrip("#").strip().partition("=")[0].strip().lower()
        if in_directives and line.lstrip().startswith("#") and key == "syntax":
            out.append("#\n")  # keeps every later line on its number
            continue
        if not line.lstrip().startswith("#"):
            in_directives = False
        out.append(line)
    dockerfile.write_text("".join(out), errors="surrogateescape")
