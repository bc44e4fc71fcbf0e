"""buildah as the reference builder: build a Dockerfile, push it, read it back with skopeo+umoci.

buildah shares no code with kiln and follows the Dockerfile reference closely enough to be an
oracle, with the known exceptions listed in ``shared/test-environment.md``. Every call runs in a
private mount namespace with its own storage (vfs) and run root in a temp dir, chroot isolation,
and a signature policy that accepts the test registry's unsigned images; nothing is left behind.
"""

from __future__ import annotations

import gzip
import io
import json
import shlex
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.runtime import require_tool

#: Files buildah 1.28 leaves empty after every RUN (bind-mount targets); Docker leaves nothing.
RUN_LEFTOVERS = ("etc/hosts", "etc/hostname", "etc/resolv.conf", "run")


@dataclass(frozen=True)
class BuildahResult:
    """How a buildah build ended: exit code and output."""

    exit_code: int
    output: str

    @property
    def error_line(self) -> str:
        lines = [line for line in self.output.splitlines() if line.strip()]
        return lines[-1] if lines else ""


def buildah_build_push(context: Path, dockerfile: Path, dest: str, work: Path, *,
                       build_args: Mapping[str, str] | None = None, target: str | None = None,
                       extra_args: Sequence[str] = (), timeout: float = 300) -> BuildahResult:
    """Build ``dockerfile`` in ``context`` with buildah and push it to ``docker://dest``.

    ``work`` holds buildah's storage, run root and policy, and is emptied afterwards. The
    destination registry is reached over plain HTTP (``--tls-verify=false``).
    """
    require_tool("buildah", "buildah")
    require_tool("unshare", "util-linux")
    work.mkdir(parents=True, exist_ok=True)
    storage, runroot = work / "storage", work / "runroot"
    policy = work / "policy.json"
    policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    buildah = ["buildah", "--storage-driver", "vfs", "--root", str(storage),
               "--runroot", str(runroot)]
    build = [*buildah, "build", "--isolation", "chroot", "--layers", "--format", "docker",
             "--signature-policy", str(policy), "--tls-verify=false", "-q",
             "-f", str(dockerfile), "-t", "localhost/conformance:latest"]
    for key, value in (build_args or {}).items():
        build += ["--build-arg", f"{key}={value}"]
    if target:
        build += ["--target", target]
    build += [*extra_args, str(context)]
    push = [*buildah, "push", "--signature-policy", str(policy), "--tls-verify=false", "-q",
            "localhost/conformance:latest", f"docker://{dest}"]
    script = (f"{shlex.join(build)} && {shlex.join(push)}; code=$?; "
              f"{shlex.join([*buildah, 'rmi', '-a', '-f'])} >/dev/null 2>&1; exit $code")
    try:
        proc = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            capture_output=True, text=True, timeout=timeout, check=False,
            stdin=subprocess.DEVNULL)
    finally:
        shutil.rmtree(storage, ignore_errors=True)
        shutil.rmtree(runroot, ignore_errors=True)
    return BuildahResult(proc.returncode, proc.stderr + proc.stdout)


def _layout_blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / digest.replace(":", "/", 1)


def layer_members(ref: str, workdir: Path) -> list[list[tarfile.TarInfo]]:
    """The tar entries of each layer of ``ref`` (bottom first), read from an OCI layout copy."""
    require_tool("skopeo", "skopeo")
    layout = Path(tempfile.mkdtemp(prefix="layers-", dir=workdir))
    try:
        subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                        f"docker://{ref}", f"oci:{layout}:tag"],
                       check=True, capture_output=True, timeout=120)
        index: dict[str, Any] = json.loads((layout / "index.json").read_text())
        manifest: dict[str, Any] = json.loads(
            _layout_blob(layout, index["manifests"][0]["digest"]).read_bytes())
        out: list[list[tarfile.TarInfo]] = []
        for desc in manifest["layers"]:
            data = _layout_blob(layout, desc["digest"]).read_bytes()
            if data[:2] == b"\x1f\x8b":
                data = gzip.decompress(data)
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
                out.append(tar.getmembers())
        return out
    finally:
        shutil.rmtree(layout, ignore_errors=True)


def is_docker_empty_layer(members: Sequence[tarfile.TarInfo], ignore: Sequence[str] = ()) -> bool:
    """Whether Docker would have written no layer for what buildah put in this one.

    buildah commits a layer for every step, even one that changes nothing, and a RUN step
    always carries the empty ``RUN_LEFTOVERS``. Without those (and the paths in ``ignore``),
    and without bare parent directories, nothing must remain.
    """
    skip = set(RUN_LEFTOVERS) | {p.strip("/") for p in ignore}
    names = [m.name.strip("/").removeprefix("./") for m in members]
    real = [(n, m) for n, m in zip(names, members, strict=True) if n and n not in skip]
    if any(not m.isdir() for _, m in real):
        return False
    # A directory entry only counts when it is not merely the parent of a skipped path.
    parents = {s.rsplit("/", 1)[0] for s in skip if "/" in s}
    return all(n in parents for n, _ in real)
