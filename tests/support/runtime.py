"""Run and inspect images with tools kiln does not share code with: skopeo, umoci and crun.

A test that builds an image with kiln proves little by reading it back with kiln. These helpers
pull the image from the registry with skopeo, unpack it with umoci, and run it with crun, the way
an OCI runtime on a real host would, so an image that passes here works outside kiln.

crun 1.8.1 refuses this VM's hybrid cgroup layout, so every crun call runs in a private mount
namespace with ``/sys/fs/cgroup/unified`` unmounted; the host's mounts are never touched.
"""

from __future__ import annotations

import json
import secrets
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Transports skopeo understands besides ``docker://``; refs with one are passed through as is.
_SKOPEO_TRANSPORTS = ("docker://", "oci:", "oci-archive:", "docker-archive:", "dir:")


class ToolMissing(RuntimeError):
    """A program the test helpers need is not installed; the message names the package."""


def require_tool(program: str, package: str) -> str:
    """The path of ``program``; raise ``ToolMissing`` naming the Debian ``package`` if absent.

    Missing tools fail tests rather than skip them: a skipped checker looks like a passing one.
    """
    path = shutil.which(program)
    if path is None:
        raise ToolMissing(f"{program} is not installed (apt-get install {package})")
    return path


@dataclass(frozen=True)
class RunResult:
    """How a container process ended and what it printed."""

    exit_code: int
    stdout: str
    stderr: str


def _skopeo_source(ref: str) -> list[str]:
    """skopeo arguments naming ``ref``: a registry reference, or any skopeo transport."""
    if ref.startswith(_SKOPEO_TRANSPORTS):
        return [ref] if not ref.startswith("docker://") else ["--src-tls-verify=false", ref]
    return ["--src-tls-verify=false", f"docker://{ref}"]


def _run_tool(
    cmd: Sequence[str], what: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(cmd), capture_output=True, text=True, check=False, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{what} failed ({proc.returncode}): {shlex.join(cmd)}\n{proc.stderr}{proc.stdout}"
        )
    return proc


def _fetch_layout(ref: str, workdir: Path) -> Path:
    """Copy ``ref`` into a fresh OCI layout under ``workdir`` (tag ``tag``); return the layout."""
    require_tool("skopeo", "skopeo")
    layout = Path(tempfile.mkdtemp(prefix="layout-", dir=workdir))
    _run_tool(
        ["skopeo", "copy", "--quiet", *_skopeo_source(ref), f"oci:{layout}:tag"],
        f"skopeo copy of {ref}",
    )
    return layout


def _unpack_bundle(ref: str, workdir: Path) -> Path:
    require_tool("umoci", "umoci")
    workdir.mkdir(parents=True, exist_ok=True)
    layout = _fetch_layout(ref, workdir)
    bundle = Path(tempfile.mkdtemp(prefix="bundle-", dir=workdir)) / "bundle"
    _run_tool(
        ["umoci", "unpack", "--image", f"{layout}:tag", str(bundle)], f"umoci unpack of {ref}"
    )
    return bundle


def unpack_image(ref: str, workdir: Path) -> Path:
    """Pull ``ref`` with skopeo, unpack it with umoci below ``workdir``; return the rootfs dir.

    Owners, modes, links and whiteouts are applied by umoci, so the tree is what a runtime sees.
    """
    return _unpack_bundle(ref, workdir) / "rootfs"


def _crun_in_private_namespace(crun_args: Sequence[str]) -> list[str]:
    """A command running ``crun crun_args...`` where crun accepts this VM's cgroup layout."""
    return [
        "unshare", "--mount", "--propagation", "private", "sh", "-c",
        'umount /sys/fs/cgroup/unified 2>/dev/null; exec crun "$@"', "sh", *crun_args,
    ]


def _edit_bundle_config(
    bundle: Path, args: Sequence[str] | None, env: Mapping[str, str] | None, cwd: str | None,
    user: tuple[int, int] | None,
) -> None:
    path = bundle / "config.json"
    spec: dict[str, Any] = json.loads(path.read_text())
    process = spec["process"]
    process["terminal"] = False
    if args is not None:
        process["args"] = list(args)
    if env:
        names = set(env)
        process["env"] = [e for e in process.get("env", []) if e.split("=", 1)[0] not in names]
        process["env"] += [f"{k}={v}" for k, v in env.items()]
    if cwd is not None:
        process["cwd"] = cwd
    if user is not None:
        process["user"] = {"uid": user[0], "gid": user[1]}
    # Without a network namespace the container shares the host's loopback, so it can reach
    # the test registry on 127.0.0.1.
    linux = spec.setdefault("linux", {})
    linux["namespaces"] = [ns for ns in linux.get("namespaces", []) if ns["type"] != "network"]
    path.write_text(json.dumps(spec, indent=2))


def run_bundle(bundle: Path, *, timeout: float = 60) -> RunResult:
    """Run an OCI runtime bundle with crun (state kept beside the bundle) and wait for it."""
    require_tool("crun", "crun")
    require_tool("unshare", "util-linux")
    state = bundle.parent / "crun-state"
    state.mkdir(exist_ok=True)
    container_id = f"kiln-test-{secrets.token_hex(6)}"
    try:
        proc = subprocess.run(
            _crun_in_private_namespace(
                ["--root", str(state), "run", "--bundle", str(bundle), container_id]
            ),
            capture_output=True, text=True, check=False, timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    finally:
        # After a clean exit crun has deleted the container already; this is for timeouts and
        # crashes, where the container could otherwise keep running.
        subprocess.run(
            _crun_in_private_namespace(["--root", str(state), "delete", "-f", container_id]),
            capture_output=True, check=False, timeout=30,
        )
    return RunResult(proc.returncode, proc.stdout, proc.stderr)


def run_image(
    ref: str,
    args: Sequence[str] | None = None,
    *,
    workdir: Path,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    user: tuple[int, int] | None = None,
    timeout: float = 60,
) -> RunResult:
    """Pull ``ref``, unpack it with umoci and run it with crun; return exit code and output.

    ``args`` replaces the image's entrypoint and command (the process args umoci derived from
    them); ``env``, ``cwd`` and ``user`` override the image config's. The container shares the
    host network so it can reach 127.0.0.1. Files go below ``workdir``.
    """
    bundle = _unpack_bundle(ref, workdir)
    _edit_bundle_config(bundle, args, env, cwd, user)
    return run_bundle(bundle, timeout=timeout)


def inspect_image(ref: str) -> dict[str, Any]:
    """``skopeo inspect`` of ``ref``: Digest, RepoTags, Created, Architecture, Env, Layers..."""
    return _skopeo_inspect(ref)


def inspect_config(ref: str) -> dict[str, Any]:
    """The image config of ``ref`` as stored (``--config --raw``: without ``--raw`` skopeo
    converts a Docker config to OCI and drops Healthcheck, Shell and OnBuild)."""
    return _skopeo_inspect(ref, "--config", "--raw")


def inspect_manifest(ref: str) -> dict[str, Any]:
    """The manifest (or index) of ``ref`` exactly as the registry serves it (``--raw``)."""
    return _skopeo_inspect(ref, "--raw")


def _skopeo_inspect(ref: str, *flags: str) -> dict[str, Any]:
    require_tool("skopeo", "skopeo")
    out = _run_tool(["skopeo", "inspect", *flags, *_inspect_source(ref)],
                    f"skopeo inspect of {ref}")
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def _inspect_source(ref: str) -> list[str]:
    if ref.startswith(_SKOPEO_TRANSPORTS) and not ref.startswith("docker://"):
        return [ref]
    return ["--tls-verify=false", ref if ref.startswith("docker://") else f"docker://{ref}"]
