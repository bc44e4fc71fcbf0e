"""The executor image for real: built from Dockerfile.executor by kiln, run by crun as PID 1.

This is the product: kiln as PID 1 of an ordinary container, extracting bases over ``/`` and
running RUN in place. The image is built with kiln in sandbox mode, its public base names mapped
to the test registry (``debian:bookworm-slim`` is the debootstrap minbase the tests make); the
build stage reaches deb.debian.org and PyPI, as ``docker build`` would.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.container import Bind, Container, ContainerSpec, run_container, write_config
from tests.support.executor_image import (
    BUSYBOX_DOCKERFILE,
    DEBIAN_DOCKERFILE,
    docker_config,
    write_dockerfile,
)
from tests.support.registry import Registry
from tests.support.runtime import inspect_image, run_image, unpack_image

pytestmark = pytest.mark.e2e



@pytest.fixture(scope="module")
def executor_rootfs(executor_image: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The debug image unpacked by umoci once; each container gets a copy of it."""
    return unpack_image(executor_image, tmp_path_factory.mktemp("executor-rootfs"))


def executor_bundle(workdir: Path, template: Path, registry: Registry, context: Path,
                    args: list[str], *, env: dict[str, str] | None = None,
                    extra_binds: tuple[Bind, ...] = ()) -> Path:
    """A container of the executor image building ``context`` in place; returns the bundle."""
    rootfs = workdir / "rootfs"
    workdir.mkdir(parents=True, exist_ok=True)
    # A fresh copy: the build overwrites the container's root filesystem.
    subprocess.run(["cp", "-a", str(template), str(rootfs)], check=True)
    spec = ContainerSpec(
        args=args,
        env={"PATH": "/usr/local/bin:/kaniko:/busybox", "HOME": "/root",
             "DOCKER_CONFIG": "/kaniko/.docker/", "SSL_CERT_DIR": "/kaniko/ssl/certs",
             # crun, unlike podman or systemd-nspawn, tells the container nothing; this is the
             # variable they set, one of the signs kaniko's container detection reads.
             "container": "crun", **(env or {})},
        binds=(Bind(context, "/workspace", readonly=True),
               Bind(docker_config(workdir / "docker", registry), "/kaniko/.docker",
                    readonly=True), *extra_binds),
    )
    return write_config(workdir / "bundle", rootfs, spec)


def build_args(dest: str, *extra: str) -> list[str]:
    return ["/kaniko/executor", "--context", "/workspace", "--destination", dest,
            "--insecure", "--insecure-pull", *extra]


def test_in_place_build_of_a_busybox_image(executor_rootfs: Path, registry: Registry,
                                          busybox_image: str, tmp_path: Path) -> None:
    context = write_dockerfile(tmp_path / "context", BUSYBOX_DOCKERFILE.format(base=busybox_image))
    dest = f"{registry.host}/inplace/busybox:1"
    bundle = executor_bundle(tmp_path / "c", executor_rootfs, registry, context, build_args(dest))
    result = run_container(bundle)
    assert result.exit_code == 0, result.stderr[-4000:]
    out = run_image(dest, workdir=tmp_path / "run")
    assert out.exit_code == 0, out.stderr
    assert out.stdout.splitlines() == ["built in place by executor", "BusyBox"]


def test_in_place_build_of_a_debian_image_runs_its_own_dpkg_and_sh(
        executor_rootfs: Path, registry: Registry, debian_image: str, tmp_path: Path) -> None:
    context = write_dockerfile(tmp_path / "context", DEBIAN_DOCKERFILE.format(base=debian_image))
    dest = f"{registry.host}/inplace/debian:1"
    bundle = executor_bundle(tmp_path / "c", executor_rootfs, registry, context, build_args(dest))
    result = run_container(bundle)
    assert result.exit_code == 0, result.stderr[-4000:]
    out = run_image(dest, workdir=tmp_path / "run")
    assert out.exit_code == 0, out.stderr
    assert out.stdout.splitlines() == ["bash install ok installed", "dpkg install ok installed",
                                       "sh says: /usr/bin/dash"]


def test_a_second_build_after_cleanup_matches_a_build_in_a_fresh_container(
        executor_rootfs: Path, registry: Registry, busybox_image: str, debian_image: str,
        tmp_path: Path) -> None:
    debian_ctx = write_dockerfile(tmp_path / "debian", DEBIAN_DOCKERFILE.format(base=debian_image))
    busybox_ctx = write_dockerfile(tmp_path / "busybox",
                                   BUSYBOX_DOCKERFILE.format(base=busybox_image))
    repo = f"{registry.host}/inplace/again"
    # One container, the GitLab way: a shell runs the executor twice. The first build is
    # debian's and --cleanup removes it; the second must not see any of it.
    script = " && ".join([
        " ".join(build_args(f"{repo}:debian", "--context", "/contexts/debian", "--cleanup")),
        "ls / > /out/after-cleanup.txt",
        " ".join(build_args(f"{repo}:second", "--context", "/contexts/busybox", "--cleanup",
                            "--reproducible", "--digest-file", "/out/second")),
    ])
    out = tmp_path / "out"
    out.mkdir()
    contexts = tmp_path / "contexts"
    contexts.mkdir()
    shutil.move(debian_ctx, contexts / "debian")
    shutil.move(busybox_ctx, contexts / "busybox")
    shared = executor_bundle(tmp_path / "shared", executor_rootfs, registry, contexts,
                             ["/busybox/sh", "-c", script],
                             extra_binds=(Bind(contexts, "/contexts", readonly=True),
                                          Bind(out, "/out")))
    result = run_container(shared, timeout=600)
    assert result.exit_code == 0, result.stderr[-4000:]
    # What --cleanup leaves: the executor, the debug shell, the mount points, and /var for
    # the ignored /var/run (kaniko's --ignore-var-run default).
    left = set((out / "after-cleanup.txt").read_text().split())
    assert left <= {"busybox", "contexts", "dev", "kaniko", "out", "proc", "sys", "var",
                    "workspace"}

    fresh = executor_bundle(tmp_path / "fresh", executor_rootfs, registry, contexts / "busybox",
                            build_args(f"{repo}:fresh", "--reproducible"))
    result = run_container(fresh)
    assert result.exit_code == 0, result.stderr[-4000:]
    second, fresh_digest = (inspect_image(f"{repo}:{t}")["Digest"] for t in ("second", "fresh"))
    assert second == fresh_digest == (out / "second").read_text()


def test_sigterm_during_run_stops_the_build_and_pushes_nothing(
        executor_rootfs: Path, registry: Registry, busybox_image: str, tmp_path: Path) -> None:
    context = write_dockerfile(tmp_path / "context", f"""\
FROM {busybox_image}
RUN touch /run-started && sleep 120
""")
    dest = f"{registry.host}/inplace/stopped:1"
    bundle = executor_bundle(tmp_path / "c", executor_rootfs, registry, context, build_args(dest))
    started = tmp_path / "c" / "rootfs" / "run-started"
    with Container(bundle) as container:
        deadline = time.monotonic() + 120
        while not started.exists():
            assert container.proc is not None and container.proc.poll() is None, \
                container.wait(10).stderr
            assert time.monotonic() < deadline, "the RUN never started"
            time.sleep(0.1)
        signalled = time.monotonic()
        container.kill()
        result = container.wait(timeout=30)
        took = time.monotonic() - signalled
    assert result.exit_code == 143, result.stderr[-4000:]
    assert took < 5
    assert "interrupted by SIGTERM" in result.stderr
    assert registry.tags("inplace/stopped") == []


def test_a_daemon_started_by_a_run_ends_with_the_run_in_place(
        executor_rootfs: Path, registry: Registry, busybox_image: str, tmp_path: Path) -> None:
    # The daemon leaves the RUN's session and process group (the RUN gives it a second to do
    # so); kiln as PID 1 must still end it with its RUN, or it writes /late into the image the
    # next RUN commits.
    context = write_dockerfile(tmp_path / "context", f"""\
FROM {busybox_image}
RUN setsid sh -c 'sleep 2; echo late > /late' > /dev/null 2>&1 & (setsid sleep 300 &); sleep 1
RUN sleep 4; test ! -e /late && ps -o pid,args > /processes && grep CapEff /proc/self/status > /caps
""")
    dest = f"{registry.host}/inplace/daemon:1"
    bundle = executor_bundle(tmp_path / "c", executor_rootfs, registry, context, build_args(dest))
    result = run_container(bundle)
    assert result.exit_code == 0, result.stderr[-4000:]
    rootfs = tmp_path / "c" / "rootfs"
    processes = (rootfs / "processes").read_text()
    assert "sleep 300" not in processes and "sleep 2" not in processes, processes
    assert (rootfs / "caps").read_text().split() == ["CapEff:", "00000000a80425fb"]


def test_the_executor_starts_in_the_plain_image_with_nothing_but_kaniko(
        plain_executor_image: str, tmp_path: Path) -> None:
    info = inspect_image(plain_executor_image)
    out = run_image(plain_executor_image, ["/kaniko/executor", "version"], workdir=tmp_path)
    assert out.exit_code == 0, out.stderr
    assert out.stdout.startswith("Kiln version")
    assert info["Env"] and "DOCKER_CONFIG=/kaniko/.docker/" in info["Env"]


def test_the_warmer_runs_in_the_plain_image_as_kanikos_does(
        plain_executor_image: str, busybox_image: str, tmp_path: Path) -> None:
    out = run_image(plain_executor_image,
                    ["/kaniko/warmer", "--cache-dir=/workspace/cache", "--insecure-pull",
                     f"--image={busybox_image}"], workdir=tmp_path)
    assert out.exit_code == 0, out.stderr
    assert f"Wrote {busybox_image} to cache as sha256:" in out.stderr


def test_a_context_on_the_containers_own_filesystem_outlives_every_stage(
        executor_rootfs: Path, registry: Registry, busybox_image: str, tmp_path: Path) -> None:
    # Sources baked into a derived image, or copied in by a CI step, are on the container's own
    # filesystem rather than a volume: extracting a base over / must not take them away, in the
    # first stage or a later one (kaniko needs --preserve-context for the later ones).
    dockerfile = (f"FROM {busybox_image} AS one\nCOPY app.txt /one.txt\n"
                  f"FROM {busybox_image}\nCOPY --from=one /one.txt /one.txt\n"
                  'COPY app.txt /app.txt\nCMD ["cat", "/one.txt", "/app.txt"]\n')
    dest = f"{registry.host}/inplace/own-context:1"
    bundle = executor_bundle(tmp_path / "c", executor_rootfs, registry,
                             write_dockerfile(tmp_path / "unused", "FROM scratch\n"),
                             build_args(dest, "--context", "/src/app", "--dockerfile",
                                        "/src/app/Dockerfile"))
    sources = tmp_path / "c" / "rootfs" / "src" / "app"
    sources.mkdir(parents=True)
    (sources / "Dockerfile").write_text(dockerfile)
    (sources / "app.txt").write_text("from the context\n")
    result = run_container(bundle)
    assert result.exit_code == 0, result.stderr[-4000:]
    assert "Copying the build context /src/app to /kaniko/buildcontext" in result.stderr
    out = run_image(dest, workdir=tmp_path / "run")
    assert out.stdout == "from the context\nfrom the context\n", out.stderr


def test_ecrs_credential_helper_runs_in_the_plain_image_as_in_kanikos(
        plain_executor_image: str, tmp_path: Path) -> None:
    # kaniko users on ECR name "ecr-login" in credHelpers and rely on the image to have it.
    out = run_image(plain_executor_image, ["/kaniko/docker-credential-ecr-login", "version"],
                    workdir=tmp_path)
    assert out.exit_code == 0, out.stderr
    assert out.stdout.strip().startswith("0.")


def test_in_place_sbom_lists_the_image_not_the_executor(
        executor_rootfs: Path, registry: Registry, debian_image: str, tmp_path: Path) -> None:
    """``--attest`` in the executor image (issue 16): spdx-tools is bundled, and the SBOM of an
    in-place build holds the built image's packages, none of kiln's own under /kaniko."""
    import json

    import requests

    context = write_dockerfile(tmp_path / "context", DEBIAN_DOCKERFILE.format(base=debian_image))
    dest = f"{registry.host}/inplace/attested:1"
    bundle = executor_bundle(tmp_path / "c", executor_rootfs, registry, context, build_args(
        dest, "--attest", "type=sbom", "--attest", "type=provenance,mode=max"))
    result = run_container(bundle)
    assert result.exit_code == 0, result.stderr[-4000:]
    base = f"http://{registry.host}/v2/inplace/attested"
    index = requests.get(f"{base}/manifests/1", timeout=30, headers={
        "Accept": "application/vnd.oci.image.index.v1+json"}).json()
    manifest = requests.get(f"{base}/manifests/{index['manifests'][1]['digest']}", timeout=30,
                            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}
                            ).json()
    sbom = next(json.loads(requests.get(f"{base}/blobs/{layer['digest']}", timeout=30).content)
                for layer in manifest["layers"]
                if layer["annotations"]["in-toto.io/predicate-type"] == "https://spdx.dev/Document")
    purls = [ref["referenceLocator"] for package in sbom["predicate"]["packages"]
             for ref in package.get("externalRefs", [])]
    assert len([p for p in purls if p.startswith("pkg:deb/debian/")]) > 80
    assert not [p for p in purls if p.startswith("pkg:pypi/")]
