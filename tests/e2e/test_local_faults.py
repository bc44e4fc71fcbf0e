"""A full disk, an unwritable output, a RUN's exit code: each ends the build with one line that
names the place and the cause, the right exit code, no traceback, no half-written file, nothing
pushed; and the same build succeeds once there is room.

The full disk is a small tmpfs in a private mount namespace (tests/support/tmpfs.py), mounted
where the build writes: the root (COPY), the kiln dir (a layer, a downloaded blob), or the
directory of an output (the tarball, the OCI layout, the digest file).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.kiln import ExecutorRun, run_executor, write_context
from tests.support.registry import Registry
from tests.support.tmpfs import executor_on_tmpfs

pytestmark = pytest.mark.e2e

ENOSPC = "No space left on device"


def skopeo_tags(registry: Registry, repository: str) -> list[str]:
    """The tags skopeo sees; none when the repository does not exist at all."""
    proc = subprocess.run(["skopeo", "list-tags", "--tls-verify=false",
                           f"docker://{registry.host}/{repository}"],
                          capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        assert "404 (Not Found)" in proc.stderr, proc.stderr
        return []
    return list(json.loads(proc.stdout)["Tags"] or [])


def assert_one_line_failure(run: ExecutorRun, line: str | re.Pattern[str],
                            exit_code: int = 1) -> None:
    assert run.exit_code == exit_code, run.stderr
    assert "Traceback" not in run.stderr
    if isinstance(line, str):
        assert run.last_line == f"error building image: {line}"
    else:
        assert re.fullmatch(line, run.last_line), run.last_line


def assert_no_process_left(tmp_path: Path) -> None:
    """No process of the build (the executor, a RUN's command) names the test's directory."""
    mine = str(tmp_path).encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            assert mine not in cmdline, cmdline.replace(b"\0", b" ").decode(errors="replace")


def build_args(context: Path, root: Path, destination: str, *extra: str) -> list[str]:
    return ["--context", str(context), "--dockerfile", str(context / "Dockerfile"),
            "--root", str(root), "--destination", destination, "--insecure", "--insecure-pull",
            *extra]


def rerun_with_room(context: Path, tmp_path: Path, destination: str, *extra: str) -> None:
    """The same build, the disk no longer full: it succeeds and the tag appears."""
    again = run_executor(context, tmp_path / "root-again", "--destination", destination,
                         "--insecure", "--insecure-pull", *extra)
    assert again.exit_code == 0, again.stderr


# --- a full disk at each place the build writes -----------------------------------------------


def test_copy_onto_a_full_disk_names_the_file_and_the_line(
        tmp_path: Path, registry: Registry, busybox_image: str) -> None:
    context = write_context(tmp_path / "context", f"FROM {busybox_image}\nCOPY big /big\n")
    (context / "big").write_bytes(os.urandom(8 << 20))
    root = tmp_path / "root"
    ref = f"{registry.host}/full/copy:1"
    full = executor_on_tmpfs(root, "6m", build_args(context, root, ref))
    assert_one_line_failure(full.run, f"Dockerfile:2: cannot copy to {root}/big: {ENOSPC}")
    assert_no_process_left(tmp_path)
    assert skopeo_tags(registry, "full/copy") == []
    rerun_with_room(context, tmp_path, ref)
    assert skopeo_tags(registry, "full/copy") == ["1"]


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_a_layer_onto_a_full_disk_names_the_blobs_directory(
        tmp_path: Path, registry: Registry, busybox_image: str, compression: str) -> None:
    # The base's 1 MB layer fits; the RUN's 4 MB of random bytes do not.
    context = write_context(tmp_path / "context", f"FROM {busybox_image}\n"
                            "RUN head -c 4194304 /dev/urandom > /big\n")
    kiln_dir = tmp_path / "kiln"
    ref = f"{registry.host}/full/layer-{compression}:1"
    full = executor_on_tmpfs(kiln_dir, "3m", build_args(
        context, tmp_path / "root", ref, "--kaniko-dir", str(kiln_dir),
        "--compression", compression))
    assert_one_line_failure(full.run, f"Dockerfile:2: cannot write a layer to {kiln_dir}/blobs: "
                                      f"{ENOSPC}")
    assert_no_process_left(tmp_path)
    assert not [p for p in full.left if p.startswith("./blobs/.layer-")]
    assert skopeo_tags(registry, f"full/layer-{compression}") == []
    rerun_with_room(context, tmp_path, ref, "--compression", compression)


def test_a_single_snapshot_onto_a_full_disk_names_the_stage(
        tmp_path: Path, registry: Registry, busybox_image: str) -> None:
    context = write_context(tmp_path / "context", f"FROM {busybox_image}\n"
                            "RUN head -c 4194304 /dev/urandom > /big\n")
    kiln_dir = tmp_path / "kiln"
    ref = f"{registry.host}/full/single:1"
    full = executor_on_tmpfs(kiln_dir, "3m", build_args(
        context, tmp_path / "root", ref, "--kaniko-dir", str(kiln_dir), "--single-snapshot"))
    assert_one_line_failure(full.run, f"Dockerfile:1: cannot write a layer to {kiln_dir}/blobs: "
                                      f"{ENOSPC}")
    assert_no_process_left(tmp_path)
    assert not [p for p in full.left if p.startswith("./blobs/.layer-")]
    assert skopeo_tags(registry, "full/single") == []


def test_a_download_onto_a_full_disk_names_the_blob(
        tmp_path: Path, registry: Registry, busybox_image: str) -> None:
    context = write_context(tmp_path / "context", f"FROM {busybox_image}\nRUN true\n")
    kiln_dir = tmp_path / "kiln"
    ref = f"{registry.host}/full/download:1"
    full = executor_on_tmpfs(kiln_dir, "256k", build_args(
        context, tmp_path / "root", ref, "--kaniko-dir", str(kiln_dir)))
    assert_one_line_failure(full.run, re.compile(
        rf"error building image: cannot write blob sha256:[0-9a-f]{{64}} to "
        rf"{re.escape(str(kiln_dir))}/blobs: {ENOSPC}"))
    assert_no_process_left(tmp_path)
    assert not [p for p in full.left if p.endswith(".partial")]
    assert skopeo_tags(registry, "full/download") == []
    rerun_with_room(context, tmp_path, ref)


def test_a_tarball_onto_a_full_disk_leaves_no_file_and_pushes_nothing(
        tmp_path: Path, registry: Registry, busybox_image: str) -> None:
    context = write_context(tmp_path / "context", f"FROM {busybox_image}\nRUN true\n")
    out = tmp_path / "out"
    ref = f"{registry.host}/full/tarball:1"
    full = executor_on_tmpfs(out, "512k", build_args(
        context, tmp_path / "root", ref, "--tar-path", str(out / "image.tar")))
    assert_one_line_failure(full.run, f"cannot write --tar-path {out}/image.tar: {ENOSPC}")
    assert_no_process_left(tmp_path)
    assert full.left == []
    assert skopeo_tags(registry, "full/tarball") == []
    rerun_with_room(context, tmp_path, ref, "--tar-path", str(tmp_path / "image.tar"))
    assert (tmp_path / "image.tar").stat().st_size > 512 << 10  # more than the tmpfs held


def test_an_oci_layout_onto_a_full_disk_leaves_no_half_made_layout(
        tmp_path: Path, registry: Registry, busybox_image: str) -> None:
    context = write_context(tmp_path / "context", f"FROM {busybox_image}\nRUN true\n")
    out = tmp_path / "out"
    ref = f"{registry.host}/full/layout:1"
    full = executor_on_tmpfs(out, "512k", build_args(
        context, tmp_path / "root", ref, "--oci-layout-path", str(out / "layout")))
    assert_one_line_failure(full.run, f"cannot write --oci-layout-path {out}/layout: {ENOSPC}")
    assert_no_process_left(tmp_path)
    assert full.left == []
    assert skopeo_tags(registry, "full/layout") == []
    rerun_with_room(context, tmp_path, ref, "--oci-layout-path", str(tmp_path / "layout"))
    assert json.loads((tmp_path / "layout" / "index.json").read_text())["manifests"]


def test_a_digest_file_onto_a_full_disk_leaves_no_empty_file(
        tmp_path: Path, registry: Registry, busybox_image: str) -> None:
    context = write_context(tmp_path / "context", f"FROM {busybox_image}\n")
    out = tmp_path / "out"
    ref = f"{registry.host}/full/digest:1"
    full = executor_on_tmpfs(out, "64k", build_args(
        context, tmp_path / "root", ref, "--digest-file", str(out / "digest")), fill=True)
    assert_one_line_failure(full.run, f"cannot write --digest-file {out}/digest: {ENOSPC}")
    assert_no_process_left(tmp_path)
    assert full.left == []
    assert skopeo_tags(registry, "full/digest") == []
    rerun_with_room(context, tmp_path, ref, "--digest-file", str(tmp_path / "digest"))
    assert (tmp_path / "digest").read_text().startswith("sha256:")


# --- outputs that can never be written fail before the build ----------------------------------


def test_a_directory_given_as_tar_path_fails_before_the_build(
        tmp_path: Path, registry: Registry, busybox_image: str) -> None:
    context = write_context(tmp_path / "context", f"FROM {busybox_image}\nRUN true\n")
    (tmp_path / "out").mkdir()
    result = run_executor(context, tmp_path / "root", "--destination",
                          f"{registry.host}/early/tar:1", "--insecure", "--insecure-pull",
                          "--tar-path", str(tmp_path / "out"))
    assert_one_line_failure(result, f"--tar-path {tmp_path}/out: is a directory; name a file")
    assert "Retrieving image" not in result.stderr
    assert skopeo_tags(registry, "early/tar") == []
    assert list((tmp_path / "out").iterdir()) == []


def test_a_digest_file_in_proc_fails_before_the_build(
        tmp_path: Path, registry: Registry, busybox_image: str) -> None:
    context = write_context(tmp_path / "context", f"FROM {busybox_image}\nRUN true\n")
    result = run_executor(context, tmp_path / "root", "--destination",
                          f"{registry.host}/early/proc:1", "--insecure", "--insecure-pull",
                          "--digest-file", "/proc/version")
    assert_one_line_failure(result, "--digest-file /proc/version: cannot create files in /proc: "
                                    "No such file or directory")
    assert "Retrieving image" not in result.stderr
    assert skopeo_tags(registry, "early/proc") == []


def test_a_fifo_given_as_dockerfile_is_called_a_fifo(tmp_path: Path) -> None:
    context = write_context(tmp_path / "context", "FROM scratch\n")
    os.mkfifo(tmp_path / "fifo")
    result = run_executor(context, tmp_path / "root", "--no-push",
                          dockerfile="../fifo", timeout=60)
    assert_one_line_failure(result, f"--dockerfile {context}/../fifo: is a FIFO, not a file")


# --- RUN's exit code --------------------------------------------------------------------------


def test_run_exit_code_is_the_executors_exit_code(
        tmp_path: Path, registry: Registry, busybox_image: str) -> None:
    context = write_context(tmp_path / "context", f"FROM {busybox_image}\nRUN exit 7\n")
    result = run_executor(context, tmp_path / "root", "--destination",
                          f"{registry.host}/exit/seven:1", "--insecure", "--insecure-pull")
    assert_one_line_failure(result, "Dockerfile:2: RUN exited with code 7", exit_code=7)
    assert skopeo_tags(registry, "exit/seven") == []


# --- a workspace left by SIGKILL --------------------------------------------------------------


def test_a_workspace_left_by_sigkill_is_removed_by_the_next_build(
        tmp_path: Path, busybox_image: str) -> None:
    temp = tmp_path / "tmp"  # these builds' TMPDIR: other builds on the machine stay out of it
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp)}

    def executor(name: str, dockerfile: str) -> list[str]:
        context = write_context(tmp_path / name, dockerfile)
        return [sys.executable, "-m", "executor.cli", "--context", str(context),
                "--dockerfile", str(context / "Dockerfile"),
                "--root", str(tmp_path / f"{name}-root"), "--no-push", "--insecure-pull"]

    killed = subprocess.Popen(executor("killed", f"FROM {busybox_image}\nRUN sleep 10\n"),
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
    assert killed.stderr is not None
    for line in killed.stderr:
        if "Running: [" in line:
            break
    killed.kill()
    killed.wait(timeout=30)
    left = [p.name for p in temp.iterdir() if p.name.startswith("kiln-workspace-")]
    assert len(left) == 1

    again = subprocess.run(executor("again", f"FROM {busybox_image}\nRUN true\n"), env=env,
                           capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0, again.stderr
    assert (f"Removed 1 workspace(s) left by builds that were killed: {temp}/{left[0]}"
            in again.stderr)
    assert [p for p in temp.iterdir() if p.name.startswith("kiln-")] == []
