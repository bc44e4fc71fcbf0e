"""The executor image run as a locked-down Kubernetes pod runs it, and as a GitLab job runs it.

What a pod's container gets, each a restriction the in-place tests hold kiln to:

- Docker's default capability set, no CAP_SYS_ADMIN: no mount(2), no mount or network namespace;
- the ``RuntimeDefault`` seccomp profile (tests/support/seccomp.py);
- no ``/.dockerenv`` and no ``container`` variable: only the kubelet's
  ``KUBERNETES_SERVICE_HOST`` says it is a container;
- the build context on a read-only volume, the registry credentials on another;
- ``/etc/resolv.conf`` and ``/etc/hosts`` bind-mounted by the kubelet (copies of the host's);
- a service-account token under ``/var/run/secrets/kubernetes.io/serviceaccount``, which no
  layer may ever hold.

The GitLab variant is Docker's way: ``/.dockerenv`` in the root, the debug image's busybox
shell as PID 1 running the job script, and ``/kaniko/.docker/config.json`` written by it.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.container import DEFAULT_CAPABILITIES, Bind, ContainerSpec, write_config
from tests.support.executor_image import docker_config
from tests.support.registry import Registry
from tests.support.seccomp import runtime_default

SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
#: What the token file holds; a test greps every layer for it.
TOKEN = "eyJhbGciOiJSUzI1NiJ9.kiln-test-service-account-token.c2lnbmF0dXJl"


@dataclass(frozen=True)
class PodBundle:
    """A bundle ready for ``run_container``, and where its pieces are on the host."""

    bundle: Path
    rootfs: Path


def _service_account(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "token").write_text(TOKEN)
    (directory / "namespace").write_text("ci\n")
    (directory / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\nkiln\n"
                                      "-----END CERTIFICATE-----\n")
    return directory


def _kubelet_files(directory: Path) -> list[Bind]:
    """The kubelet's own resolv.conf and hosts for the pod, bound over the image's."""
    directory.mkdir(parents=True, exist_ok=True)
    binds = []
    for name in ("resolv.conf", "hosts"):
        shutil.copy(f"/etc/{name}", directory / name)
        binds.append(Bind(directory / name, f"/etc/{name}"))
    return binds


def pod_bundle(workdir: Path, template: Path, registry: Registry, context: Path,
               args: list[str], *, extra_binds: tuple[Bind, ...] = (),
               gitlab: bool = False, extra_capabilities: tuple[str, ...] = ()) -> PodBundle:
    """A container of the executor image (``template``, an unpacked rootfs) under the
    restrictions above; ``gitlab``: the GitLab-runner variant instead of a pod's;
    ``extra_capabilities``: more than a pod gets (CAP_SYS_ADMIN, for the privileged case)."""
    workdir.mkdir(parents=True, exist_ok=True)
    rootfs = workdir / "rootfs"
    subprocess.run(["cp", "-a", str(template), str(rootfs)], check=True)
    env = {"PATH": "/usr/local/bin:/kaniko:/busybox", "HOME": "/root",
           "DOCKER_CONFIG": "/kaniko/.docker/", "SSL_CERT_DIR": "/kaniko/ssl/certs"}
    binds = [Bind(context, "/workspace", readonly=True), *_kubelet_files(workdir / "kubelet")]
    if gitlab:
        (rootfs / ".dockerenv").touch()
        env.update({"CI": "true", "GITLAB_CI": "true"})
    else:
        env.update({"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"})
        binds.append(Bind(docker_config(workdir / "docker", registry), "/kaniko/.docker",
                          readonly=True))
        binds.append(Bind(_service_account(workdir / "sa"), SERVICE_ACCOUNT, readonly=True))
    caps = [*DEFAULT_CAPABILITIES, *extra_capabilities]
    spec = ContainerSpec(args=args, env=env, binds=(*binds, *extra_binds),
                         seccomp=runtime_default(caps), capabilities=caps)
    return PodBundle(write_config(workdir / "bundle", rootfs, spec), rootfs)


def gitlab_job_script(registry: Registry, *commands: str) -> list[str]:
    """The argv of a GitLab job in the debug image: write config.json, then ``commands``."""
    auth = f'{{"auths":{{"{registry.host}":{{"auth":"a2lsbjpraWxu"}}}}}}'
    script = " && ".join([f"mkdir -p /kaniko/.docker && echo '{auth}' > "
                          "/kaniko/.docker/config.json", *commands])
    return ["/busybox/sh", "-c", script]


def executor_args(dest: str, *extra: str) -> list[str]:
    return ["/kaniko/executor", "--context", "/workspace", "--destination", dest,
            "--insecure", "--insecure-pull", *extra]
