"""In place, as a locked-down pod runs kiln: every RUN --mount type without CAP_SYS_ADMIN.

The executor image runs under crun with what a pod gets (tests/support/pod.py: Docker's default
capabilities, the RuntimeDefault seccomp profile, the kubelet's environment and mounts, a
service-account token), builds, pushes; crun and containerd run the image, and every layer is
listed to show that nothing of the mounts is in it.
"""

from __future__ import annotations

import json
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.container import Bind, run_container
from tests.support.containerd import Containerd
from tests.support.executor_image import write_dockerfile
from tests.support.pod import TOKEN, executor_args, gitlab_job_script, pod_bundle
from tests.support.registry import Registry
from tests.support.runtime import RunResult, run_image, unpack_image

pytestmark = pytest.mark.e2e

SECRET = "pod-s3cr3t-9f8e7d"


@pytest.fixture(scope="module")
def executor_rootfs(executor_image: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The debug image unpacked once; each container gets a copy of it."""
    return unpack_image(executor_image, tmp_path_factory.mktemp("pod-executor-rootfs"))


def layer_listings(ref: str, workdir: Path) -> list[dict[str, bytes]]:
    """Every layer of ``ref``, in order: entry name -> content (empty for non-files)."""
    layout = workdir / "layout"
    workdir.mkdir(parents=True, exist_ok=True)
    subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{ref}",
                    f"oci:{layout}:x"], check=True, capture_output=True)
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"].split(":", 1)[1]
    manifest = json.loads((layout / "blobs/sha256" / digest).read_text())
    listings = []
    for layer in manifest["layers"]:
        blob = layout / "blobs/sha256" / layer["digest"].split(":", 1)[1]
        with tarfile.open(blob) as tar:
            entries = {}
            for member in tar:
                data = tar.extractfile(member) if member.isfile() else None
                entries[member.name.rstrip("/")] = data.read() if data is not None else b""
            listings.append(entries)
    return listings


ALL_MOUNTS = """\
FROM {base} AS tools
RUN mkdir -p /opt/tool && echo "from a stage" > /opt/tool/version

FROM {base}
RUN mkdir -p /var/cache/app /srv/data && echo "the image's own" > /var/cache/app/own.txt \\
 && echo keep > /srv/data/keep.txt
RUN --mount=type=cache,id=pkgs,target=/var/cache/app,uid=1000,gid=1000,mode=0750 \\
    sh -c 'test "$(stat -c %u:%g:%a /var/cache/app)" = 1000:1000:750 \\
           && test ! -e /var/cache/app/own.txt && mkdir -p /var/cache/app/sub \\
           && echo warm > /var/cache/app/sub/hit'
RUN --mount=type=cache,id=pkgs,target=/cache,sharing=locked cat /cache/sub/hit > /cache-locked.txt
RUN --mount=type=cache,id=pkgs,target=/cache,sharing=private,source=sub \
    ls /cache > /cache-source.txt
RUN --mount=type=cache,id=pkgs,target=/cache cat /cache/sub/hit > /cache-shared.txt
RUN --mount=type=cache,id=seeded,target=/seed,from=tools,source=/opt/tool \\
    cat /seed/version > /cache-from.txt
RUN --mount=type=secret,id=token,required=true \\
    --mount=type=secret,id=token,env=TOKEN,target=/etc/token,mode=0440 \\
    sh -c 'test "$(cat /run/secrets/token)" = "$TOKEN" && test "$(stat -c %a /etc/token)" = 440 \\
           && echo secret-ok > /secret.txt'
RUN --mount=target=/ctx sh -c 'cat /ctx/app.txt > /bind-context.txt; echo x > /ctx/app.txt; true'
RUN --mount=target=/ctx,rw sh -c 'echo changed > /ctx/app.txt && cat /ctx/app.txt > /bind-rw.txt'
RUN --mount=target=/ctx cat /ctx/app.txt > /bind-after.txt
RUN --mount=from=tools,source=/opt/tool,target=/tool cat /tool/version > /bind-stage.txt
RUN --mount=from={base},source=/bin/busybox,target=/srv/data/bb \\
    sh -c 'cmp /srv/data/bb /bin/busybox && ls /srv/data > /bind-image.txt'
RUN --mount=type=tmpfs,target=/srv/data \\
    sh -c 'test -z "$(ls /srv/data)" && touch /srv/data/t && echo tmpfs-ok > /tmpfs.txt'
RUN --mount=type=cache,target=/a --mount=type=tmpfs,target=/a/b \\
    sh -c 'touch /a/b/x /a/y && echo nested-ok > /nested.txt'
RUN --network=none echo network-ok > /network.txt
RUN grep -E '^(CapEff|Seccomp):' /proc/self/status > /pod-status.txt
CMD ["sh", "-c", "cat /*.txt /var/cache/app/own.txt /srv/data/keep.txt"]
"""

OUTPUTS = {"bind-after.txt": "from the context\n", "bind-context.txt": "from the context\n",
           "bind-image.txt": "bb\nkeep.txt\n", "bind-rw.txt": "changed\n",
           "bind-stage.txt": "from a stage\n", "cache-from.txt": "from a stage\n",
           "cache-locked.txt": "warm\n", "cache-shared.txt": "warm\n",
           "cache-source.txt": "hit\n", "nested.txt": "nested-ok\n", "network.txt": "network-ok\n",
           "secret.txt": "secret-ok\n", "tmpfs.txt": "tmpfs-ok\n"}


@dataclass(frozen=True)
class PodBuild:
    dest: str
    result: RunResult
    layers: list[dict[str, bytes]]
    base_layers: int


def build_all_mounts(tmp: Path, executor_rootfs: Path, registry: Registry, busybox_image: str,
                     extra_capabilities: tuple[str, ...] = ()) -> PodBuild:
    context = write_dockerfile(tmp / "context", ALL_MOUNTS.format(base=busybox_image))
    (context / "app.txt").write_text("from the context\n")
    secrets = tmp / "secrets"
    secrets.mkdir()
    (secrets / "token").write_text(SECRET)
    dest = f"{registry.host}/pod/all-mounts:{len(extra_capabilities)}"
    pod = pod_bundle(tmp / "c", executor_rootfs, registry, context,
                     executor_args(dest, "--secret", "id=token,src=/secrets/token"),
                     extra_binds=(Bind(secrets, "/secrets", readonly=True),),
                     extra_capabilities=extra_capabilities)
    result = run_container(pod.bundle, timeout=600)
    assert result.exit_code == 0, result.stderr[-6000:]
    return PodBuild(dest, result, layer_listings(dest, tmp / "layers"), base_layers=1)


@pytest.fixture(scope="module")
def pod_build(executor_rootfs: Path, registry: Registry, busybox_image: str,
              tmp_path_factory: pytest.TempPathFactory) -> PodBuild:
    """ALL_MOUNTS built once in a pod; the tests below each check one thing of it."""
    return build_all_mounts(tmp_path_factory.mktemp("pod-all-mounts"), executor_rootfs,
                            registry, busybox_image)


def test_with_cap_sys_admin_in_place_uses_real_mounts_and_isolates_the_network(
        executor_rootfs: Path, registry: Registry, busybox_image: str, tmp_path: Path) -> None:
    built = build_all_mounts(tmp_path, executor_rootfs, registry, busybox_image,
                             ("CAP_SYS_ADMIN",))
    final = built.layers[built.base_layers:]
    written = {name: data.decode() for layer in final for name, data in layer.items()
               if name in OUTPUTS}
    assert written == OUTPUTS
    # A real read-only bind refuses the write (no copy to discard), and --network=none works.
    assert "read-only, but the command changed it" not in built.result.stderr
    assert "may not create a network namespace" not in built.result.stderr
    for layer in final[1:]:
        assert all(name.endswith(".txt") and "/" not in name for name in layer), sorted(layer)


def test_every_mount_type_builds_in_a_pod_without_cap_sys_admin(pod_build: PodBuild) -> None:
    assert "could not set up the command's namespaces" not in pod_build.result.stderr
    final = pod_build.layers[pod_build.base_layers:]
    written = {name: data.decode() for layer in final for name, data in layer.items()
               if name in OUTPUTS}
    assert written == OUTPUTS


def test_the_pod_restrictions_were_in_force_for_run(pod_build: PodBuild) -> None:
    status = next(layer["pod-status.txt"] for layer in pod_build.layers
                  if "pod-status.txt" in layer).decode()
    fields = dict(line.split(":\t") for line in status.splitlines())
    assert fields["Seccomp"] == "2"  # a filter is in force
    assert int(fields["CapEff"], 16) & (1 << 21) == 0  # no CAP_SYS_ADMIN


def test_no_layer_holds_anything_of_the_mounts(pod_build: PodBuild) -> None:
    # The RUNs after the first write only their own /*.txt files: no cache, bind, secret or
    # tmpfs content, no mount point, no moved-aside target, no parent directory.
    setup, *runs = pod_build.layers[pod_build.base_layers:]
    assert set(setup) == {"srv", "srv/data", "srv/data/keep.txt", "var", "var/cache",
                          "var/cache/app", "var/cache/app/own.txt"}
    for layer in runs:
        assert all(name.endswith(".txt") and "/" not in name for name in layer), sorted(layer)


def test_no_layer_holds_the_secret_or_the_service_account_token(pod_build: PodBuild) -> None:
    for layer in pod_build.layers:
        for name, data in layer.items():
            assert SECRET.encode() not in data, name
            assert TOKEN.encode() not in data, name
            assert not name.startswith(("var/run", "run/secrets")), name


def test_a_write_to_a_read_only_bind_is_reported_and_discarded(pod_build: PodBuild) -> None:
    assert ("RUN --mount target /ctx is read-only, but the command changed it; the changes "
            "were discarded") in pod_build.result.stderr


def test_network_none_warns_once_and_builds(pod_build: PodBuild) -> None:
    assert pod_build.result.stderr.count("RUN --network=none: this container may not create "
                                         "a network namespace") == 1


def test_crun_runs_the_image_built_in_a_pod(pod_build: PodBuild, tmp_path: Path) -> None:
    out = run_image(pod_build.dest, workdir=tmp_path)
    assert out.exit_code == 0, out.stderr
    assert out.stdout.endswith("the image's own\nkeep\n")
    assert "from the context\n" in out.stdout


def test_containerd_runs_the_image_built_in_a_pod(pod_build: PodBuild,
                                                  containerd: Containerd) -> None:
    out = containerd.pull_and_run(pod_build.dest)
    assert out.exit_code == 0, out.stderr
    assert out.stdout.endswith("the image's own\nkeep\n")


KILLED = """\
FROM {base}
RUN mkdir -p /var/cache/app && echo "the image's own" > /var/cache/app/own.txt
RUN --mount=type=cache,id=k,target=/var/cache/app --mount=type=secret,id=token \\
    sh -c 'echo first > /var/cache/app/from-first && touch /kaniko-run-started && sleep 300'
"""

AGAIN = """\
FROM {base}
RUN mkdir -p /var/cache/app && echo "the image's own" > /var/cache/app/own.txt
RUN --mount=type=cache,id=k,target=/var/cache/app ls /var/cache/app > /cache.txt
RUN ls /run/secrets 2>/dev/null > /secrets.txt; ls /var/cache/app > /own.txt
"""


def test_a_build_killed_during_a_run_mount_is_undone_by_the_next_build(
        executor_rootfs: Path, registry: Registry, busybox_image: str, tmp_path: Path) -> None:
    contexts = tmp_path / "contexts"
    write_dockerfile(contexts / "killed", KILLED.format(base=busybox_image))
    write_dockerfile(contexts / "again", AGAIN.format(base=busybox_image))
    repo = f"{registry.host}/pod/killed"
    first = " ".join(executor_args(f"{repo}:1", "--context", "/workspace/killed",
                                   "--secret", "id=token,env=TOKEN"))
    second = " ".join(executor_args(f"{repo}:2", "--context", "/workspace/again"))
    # The job's shell starts the build, SIGKILLs it once the RUN is under way (as an OOM kill
    # would), and builds again in the same container.
    script = gitlab_job_script(
        registry, f"export TOKEN={SECRET}",
        f"{{ {first} & pid=$!; }}; i=0; while [ ! -e /kaniko-run-started ] && [ $i -lt 600 ]; "
        "do sleep 0.2; i=$((i+1)); done",
        "kill -9 $pid; sleep 1",
        "ls /run/secrets > /out/secrets-before.txt 2>&1; true",
        second)
    out = tmp_path / "out"
    out.mkdir()
    pod = pod_bundle(tmp_path / "c", executor_rootfs, registry, contexts, script,
                     extra_binds=(Bind(out, "/out"),), gitlab=True)
    result = run_container(pod.bundle, timeout=600)
    assert result.exit_code == 0, result.stderr[-6000:]
    assert "token" in (out / "secrets-before.txt").read_text()  # the kill left the secret
    assert "Undoing the RUN --mount placements of an interrupted build" in result.stderr
    layers = layer_listings(f"{repo}:2", tmp_path / "layers")
    files = {name: data.decode(errors="replace") for layer in layers[1:]
             for name, data in layer.items()}
    assert files["cache.txt"] == "from-first\n"  # the killed RUN's cache went back to its store
    assert files["secrets.txt"] == ""
    assert files["own.txt"] == "own.txt\n"
    for layer in layers:
        assert all(SECRET.encode() not in data for data in layer.values())


AFTER_RESTART = """\
FROM {base}
RUN mkdir -p /var/cache/app && echo "the image's own" > /var/cache/app/own.txt
RUN --mount=type=cache,id=k,target=/var/cache/app ls /var/cache/app > /cache.txt
RUN --mount=type=tmpfs,target=/var/cache/app rm -rf /var/cache
RUN ls /var/cache/app > /own.txt 2>/dev/null; true
"""


@dataclass(frozen=True)
class Restarted:
    """The second container's build, its stderr and its layers."""

    result: RunResult
    files: dict[str, str]
    names: set[str]


@pytest.fixture(scope="module")
def restarted(executor_rootfs: Path, registry: Registry, busybox_image: str,
              tmp_path_factory: pytest.TempPathFactory) -> Restarted:
    """The kiln dir is a kept volume (the executor image's /kaniko, copied once onto it).
    A first container's build is SIGKILLed during a RUN --mount; the container is gone and
    a second one starts with a fresh / from the executor image, the same volume, and files
    of its own at the dead build's mount targets, then builds AFTER_RESTART."""
    tmp = tmp_path_factory.mktemp("pod-restart")
    contexts = tmp / "contexts"
    write_dockerfile(contexts / "killed", KILLED.format(base=busybox_image))
    write_dockerfile(contexts / "again", AFTER_RESTART.format(base=busybox_image))
    volume = tmp / "kiln-volume"
    subprocess.run(["cp", "-a", str(executor_rootfs / "kaniko"), str(volume)], check=True)
    kept = (Bind(volume, "/kaniko"),)
    repo = f"{registry.host}/pod/restarted"
    first = " ".join(executor_args(f"{repo}:1", "--context", "/workspace/killed",
                                   "--secret", "id=token,env=TOKEN"))
    killer = gitlab_job_script(
        registry, f"export TOKEN={SECRET}",
        f"{{ {first} & pid=$!; }}; i=0; while [ ! -e /kaniko-run-started ] && [ $i -lt 600 ]; "
        "do sleep 0.2; i=$((i+1)); done",
        "kill -9 $pid; sleep 1; test -e /kaniko/mounts/journal.json")
    pod = pod_bundle(tmp / "c1", executor_rootfs, registry, contexts, killer,
                     extra_binds=kept, gitlab=True)
    result = run_container(pod.bundle, timeout=600)
    assert result.exit_code == 0, result.stderr[-6000:]
    second = " ".join(executor_args(f"{repo}:2", "--context", "/workspace/again"))
    job = gitlab_job_script(
        registry, "mkdir -p /var/cache/app /run/secrets",
        "echo \"the new container's\" > /var/cache/app/job.txt",
        "echo \"the new container's\" > /run/secrets/token", second)
    pod = pod_bundle(tmp / "c2", executor_rootfs, registry, contexts, job,
                     extra_binds=kept, gitlab=True)
    result = run_container(pod.bundle, timeout=600)
    assert result.exit_code == 0, result.stderr[-6000:]
    layers = layer_listings(f"{repo}:2", tmp / "layers")
    files = {name: data.decode(errors="replace") for layer in layers[1:]
             for name, data in layer.items()}
    return Restarted(result, files, {name for layer in layers for name in layer})


def test_a_journal_kept_across_a_container_restart_takes_nothing_from_the_fresh_root(
        restarted: Restarted) -> None:
    # Replayed, the dead build's cache step would have taken the new container's
    # /var/cache/app into the cache store, and its secret step removed /run/secrets/token.
    assert ("Discarding RUN --mount journal /kaniko/mounts/journal.json for "
            "/run/secrets/token, /var/cache/app: what is there is not what the interrupted "
            "build placed (the journal was written for another root filesystem"
            ) in restarted.result.stderr
    assert "Undoing the RUN --mount placements" not in restarted.result.stderr
    assert restarted.files["cache.txt"] == ""  # a fresh cache: nothing of the job's files


def test_with_the_kiln_dir_on_a_volume_the_images_content_outlives_removing_the_targets_parent(
        restarted: Restarted) -> None:
    # Under a real mount, rm -rf /var/cache stops at the mount point and the image's content
    # stays under it; placed, it is held at the top of the root, out of the command's way.
    assert restarted.files["own.txt"] == "own.txt\n"
    assert not any(".kiln-" in name for name in restarted.names)  # nothing held or half-made
