"""The seccomp profile a pod gets with ``RuntimeDefault``, as an OCI ``linux.seccomp`` for crun.

CRI-O and Podman apply ``/usr/share/containers/seccomp.json`` (Debian's
``golang-github-containers-common``; containerd's and Docker's default profiles are close to it).
It is written in the containers format, where a rule may apply only with some capabilities or on
some architectures (``includes`` / ``excludes``); runtimes resolve those against the container's
capability set and the machine before handing the profile to the kernel, and so does this.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PROFILE = Path("/usr/share/containers/seccomp.json")

# Go's names for this machine's architecture, as the profile's "arches" use them.
_GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "ppc64le": "ppc64le", "s390x": "s390x"}
_SCMP_ARCH = {"amd64": "SCMP_ARCH_X86_64", "arm64": "SCMP_ARCH_AARCH64",
              "ppc64le": "SCMP_ARCH_PPC64LE", "s390x": "SCMP_ARCH_S390X"}


def _applies(rule: dict[str, Any], caps: set[str], arch: str) -> bool:
    includes, excludes = rule.get("includes") or {}, rule.get("excludes") or {}
    if includes.get("caps") and not set(includes["caps"]) <= caps:
        return False
    if includes.get("arches") and arch not in includes["arches"]:
        return False
    if excludes.get("caps") and set(excludes["caps"]) & caps:
        return False
    return not (excludes.get("arches") and arch in excludes["arches"])


def runtime_default(capabilities: Sequence[str], profile: Path = PROFILE) -> dict[str, Any]:
    """``linux.seccomp`` for a container with ``capabilities`` on this machine."""
    data = json.loads(profile.read_text())
    arch = _GO_ARCH.get(platform.machine(), platform.machine())
    caps = set(capabilities)
    scmp = _SCMP_ARCH[arch]
    arches = [scmp]
    for entry in data.get("archMap") or []:
        if entry["architecture"] == scmp:
            arches += entry.get("subArchitectures") or []
    syscalls = []
    for rule in data["syscalls"]:
        if not _applies(rule, caps, arch):
            continue
        names = rule.get("names") or ([rule["name"]] if rule.get("name") else [])
        if not names:
            continue
        out: dict[str, Any] = {"names": names, "action": rule["action"]}
        if rule.get("args"):
            out["args"] = rule["args"]
        if rule.get("errnoRet") is not None:
            out["errnoRet"] = rule["errnoRet"]
        syscalls.append(out)
    seccomp: dict[str, Any] = {"defaultAction": data["defaultAction"], "architectures": arches,
                               "syscalls": syscalls}
    if data.get("defaultErrnoRet") is not None:
        seccomp["defaultErrnoRet"] = data["defaultErrnoRet"]
    return seccomp
