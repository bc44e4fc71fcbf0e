"""The RuntimeDefault profile the pod bench gives crun: includes/excludes resolved per caps."""

from __future__ import annotations

from typing import Any

from tests.support.container import DEFAULT_CAPABILITIES
from tests.support.seccomp import PROFILE, runtime_default


def test_the_runtime_default_profile_is_installed() -> None:
    # Debian's golang-github-containers-common (scripts/setup installs it): a fail, not a skip.
    assert PROFILE.exists(), f"{PROFILE} missing: apt-get install golang-github-containers-common"


def allowed(seccomp: dict[str, Any], name: str) -> bool:
    return any(name in rule["names"] and rule["action"] == "SCMP_ACT_ALLOW"
               for rule in seccomp["syscalls"])


def test_a_pods_profile_keeps_the_cap_sys_admin_calls_out() -> None:
    profile = runtime_default(DEFAULT_CAPABILITIES)
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    assert not allowed(profile, "bpf")  # included only with CAP_SYS_ADMIN
    assert allowed(profile, "chroot")  # CAP_SYS_CHROOT is in the default set
    assert allowed(profile, "openat")
    # Podman's profile lets mount(2) and unshare(2) through: the missing capability is what
    # refuses them in a pod (Docker's profile refuses them as well).
    assert allowed(profile, "mount") and allowed(profile, "unshare")


def test_cap_sys_admin_brings_its_calls_back() -> None:
    profile = runtime_default([*DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN"])
    assert allowed(profile, "bpf")
