"""The pieces behind one-line I/O errors, early output checks and workspace cleanup."""

from __future__ import annotations

import errno
import fcntl
import io
import os
import stat
import subprocess
import sys
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from executor.errors import BuildStepError, OptionsError, RegistryError, at_step
from executor.image.atomic import write_output
from executor.image.layout import write_oci_layout
from executor.image.tarball import write_docker_tarball
from executor.options import BuildOptions, file_kind, not_a_file, read_secrets
from executor.publish import check_local_outputs
from executor.workspace import (
    LOCK_NAME,
    PREFIX,
    remove_abandoned,
    remove_stale_partials,
    temporary_workspace,
)
from snapshot.errors import (
    SnapshotError,
    StorageError,
    describe_os_error,
    storage_errors,
)
from tests.unit.test_outputs import make_image

# --- storage_errors: one line naming the place -----------------------------------------------


def test_a_write_error_without_a_filename_names_the_place() -> None:
    with pytest.raises(StorageError) as raised, storage_errors("/out/image.tar"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert str(raised.value) == "cannot write /out/image.tar: No space left on device"


def test_a_temporary_name_in_the_error_is_replaced_by_the_place() -> None:
    with pytest.raises(StorageError) as raised, storage_errors("--tar-path /out", "write"):
        raise IsADirectoryError(errno.EISDIR, "Is a directory", "/out/.out.tmpabc", None, "/out")
    assert str(raised.value) == "cannot write --tar-path /out: Is a directory"


def test_a_snapshot_error_inside_is_kept_as_it_is() -> None:
    with pytest.raises(SnapshotError) as raised, storage_errors("/x"):
        raise SnapshotError("/etc/passwd vanished")
    assert str(raised.value) == "/etc/passwd vanished"


def test_writing_to_dev_full_is_a_storage_error() -> None:
    with pytest.raises(StorageError, match=r"^cannot write /dev/full: No space left on device$"), \
            storage_errors("/dev/full"), open("/dev/full", "wb", buffering=0) as full:
        full.write(b"x")


def test_an_os_error_nothing_named_still_says_its_file() -> None:
    assert describe_os_error(OSError(errno.EIO, "Input/output error")) == "Input/output error"
    assert describe_os_error(FileNotFoundError(errno.ENOENT, "No such file or directory",
                                               "/a")) == "/a: No such file or directory"
    assert describe_os_error(OSError(errno.EXDEV, "Invalid cross-device link", "/a", None,
                                     "/b")) == "/a -> /b: Invalid cross-device link"


# --- at_step: every step error carries its line, and a RUN's exit code ------------------------


@pytest.mark.parametrize(("raised", "line"), [
    (OSError(errno.ENOSPC, "No space left on device"), "Dockerfile:4: No space left on device"),
    (StorageError("cannot write a layer to /k/blobs: No space left on device"),
     "Dockerfile:4: cannot write a layer to /k/blobs: No space left on device"),
    (RegistryError("cannot reach registry r: connection refused"),
     "Dockerfile:4: cannot reach registry r: connection refused"),
])
def test_a_step_error_gets_the_instructions_line(raised: Exception, line: str) -> None:
    with pytest.raises(BuildStepError) as caught, at_step("Dockerfile:4"):
        raise raised
    assert str(caught.value) == line
    assert caught.value.exit_code == 1


def test_a_step_error_that_has_its_line_is_not_prefixed_twice() -> None:
    with pytest.raises(BuildStepError) as caught, at_step("Dockerfile:4"):
        raise BuildStepError("Dockerfile:4", "RUN exited with code 7", exit_code=7)
    assert str(caught.value) == "Dockerfile:4: RUN exited with code 7"
    assert caught.value.exit_code == 7


# --- what a path is, when it is not a file ----------------------------------------------------


def test_file_kinds(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "file").write_text("x")
    assert file_kind(tmp_path / "file") is None
    assert file_kind(tmp_path / "fifo") == "a FIFO"
    assert file_kind(tmp_path) == "a directory"
    assert file_kind(Path("/dev/zero")) == "a character device"
    assert file_kind(tmp_path / "missing") == "missing"


def test_not_a_file_says_what_it_is() -> None:
    assert not_a_file("--dockerfile /dev/zero", Path("/dev/zero")) == \
        "--dockerfile /dev/zero: is a character device, not a file"
    assert not_a_file("--dockerfile /nope", Path("/nope")) == "--dockerfile /nope: no such file"


def test_a_directory_given_as_dockerfile_is_called_a_directory(tmp_path: Path) -> None:
    with pytest.raises(OptionsError, match=r"^--dockerfile .*: is a directory, not a file$"):
        BuildOptions(context=tmp_path, dockerfile=tmp_path, no_push=True,
                     root=tmp_path / "root").validate()


def test_a_device_as_secret_source_is_refused_before_reading_it() -> None:
    with pytest.raises(OptionsError) as raised:
        read_secrets((("token", "file", "/dev/zero"),))
    assert str(raised.value) == ("--secret id=token: cannot read /dev/zero: it is a character "
                                 "device, not a file")


def test_a_directory_as_secret_source_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OptionsError, match=r"it is a directory, not a file$"):
        read_secrets((("token", "file", str(tmp_path)),))


# --- outputs checked before the build ---------------------------------------------------------


def outputs(tmp_path: Path, **paths: Path) -> BuildOptions:
    return BuildOptions(context=tmp_path, dockerfile=tmp_path / "Dockerfile", no_push=True,
                        **paths)  # type: ignore[arg-type]


def test_outputs_in_new_directories_pass_and_create_nothing(tmp_path: Path) -> None:
    check_local_outputs(outputs(tmp_path, tar_path=tmp_path / "a" / "b" / "image.tar",
                                oci_layout_path=tmp_path / "layout",
                                digest_file=tmp_path / "digest"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("flag", "message"), [
    ("tar_path", "--tar-path {dir}: is a directory; name a file"),
    ("digest_file", "--digest-file {dir}: is a directory; name a file"),
    ("image_name_with_digest_file", "--image-name-with-digest-file {dir}: is a directory; "
                                    "name a file"),
])
def test_a_directory_given_as_an_output_file_is_refused(tmp_path: Path, flag: str,
                                                        message: str) -> None:
    with pytest.raises(OptionsError) as raised:
        check_local_outputs(outputs(tmp_path, **{flag: tmp_path}))
    assert str(raised.value) == message.format(dir=tmp_path)


def test_a_file_given_as_the_layout_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(OptionsError, match=r"^--oci-layout-path .*/file: not a directory$"):
        check_local_outputs(outputs(tmp_path, oci_layout_path=tmp_path / "file"))


def test_an_output_under_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(OptionsError, match=r"/file/sub/digest: Not a directory$"):
        check_local_outputs(outputs(tmp_path, digest_file=tmp_path / "file" / "sub" / "digest"))


def test_an_output_where_no_file_can_be_created_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OptionsError) as raised:
        check_local_outputs(outputs(tmp_path, digest_file=Path("/proc/version")))
    assert str(raised.value) == ("--digest-file /proc/version: cannot create files in /proc: "
                                 "No such file or directory")


def test_dev_stdout_as_digest_file_is_written_in_place(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    check_local_outputs(outputs(tmp_path, digest_file=fifo))
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        write_output(fifo, b"sha256:abc")
        assert os.read(reader, 100) == b"sha256:abc"
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_an_output_file_is_replaced_whole(tmp_path: Path) -> None:
    target = tmp_path / "digest"
    target.write_text("old")
    write_output(target, b"new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["digest"]


def test_a_bind_mounted_digest_file_is_written_in_place(tmp_path: Path) -> None:
    # /dev/termination-log, kaniko's documented --digest-file in a pod, is such a file: a rename
    # cannot replace a mount point (EBUSY).
    source, target = tmp_path / "source", tmp_path / "termination-log"
    source.write_text("")
    target.write_text("")
    write = ("import sys; from pathlib import Path; from executor.image.atomic import "
             "write_output; write_output(Path(sys.argv[1]), b'sha256:abc')")
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           'mount --bind "$1" "$2" && exec "$3" -c "$4" "$2"', "sh",
                           str(source), str(target), sys.executable, write],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert source.read_text() == "sha256:abc"


def test_a_tarball_to_a_fifo_is_streamed_into_it(tmp_path: Path) -> None:
    image = make_image(tmp_path / "blobs", {"a": b"a"})
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with ThreadPoolExecutor(1) as pool:
        read = pool.submit(lambda: fifo.read_bytes())
        write_docker_tarball(fifo, "app:1", image.config_bytes, image.layers)
        data = read.result(timeout=30)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert "manifest.json" in tar.getnames()
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


# --- a new OCI layout appears whole or not at all ---------------------------------------------


def test_a_failed_new_layout_leaves_nothing(tmp_path: Path) -> None:
    image = make_image(tmp_path / "blobs", {"a": b"a"}, {"b": b"b"})
    image.layers[1].path.unlink()  # the second layer's blob is gone: the write fails part way
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(OSError):
        write_oci_layout(out / "layout", image.manifest_bytes, image.config_bytes,
                         image.layers, "v1")
    assert list(out.iterdir()) == []


def test_a_new_layout_replaces_an_empty_directory(tmp_path: Path) -> None:
    image = make_image(tmp_path / "blobs", {"a": b"a"})
    (tmp_path / "layout").mkdir()
    write_oci_layout(tmp_path / "layout", image.manifest_bytes, image.config_bytes,
                     image.layers, "v1")
    assert (tmp_path / "layout" / "index.json").is_file()
    assert stat.S_IMODE(os.stat(tmp_path / "layout").st_mode) == 0o755
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# --- workspaces of killed builds --------------------------------------------------------------


def abandoned_workspace(parent: Path, name: str = "abandoned") -> Path:
    """What a SIGKILLed build leaves: its directory and an unlocked lock file."""
    path = parent / f"{PREFIX}{name}"
    (path / "blobs").mkdir(parents=True)
    (path / "blobs" / "layer").write_bytes(b"x" * 100)
    (path / LOCK_NAME).touch()
    return path


def test_an_abandoned_workspace_is_removed(tmp_path: Path) -> None:
    left = abandoned_workspace(tmp_path)
    assert remove_abandoned(tmp_path) == [left]
    assert not left.exists()


def test_a_workspace_a_running_build_holds_is_kept(tmp_path: Path) -> None:
    held = abandoned_workspace(tmp_path)
    fd = os.open(held / LOCK_NAME, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert remove_abandoned(tmp_path) == []
        assert held.exists()
    finally:
        os.close(fd)


def test_directories_kiln_did_not_make_are_kept(tmp_path: Path) -> None:
    no_lock = tmp_path / f"{PREFIX}no-lock"
    no_lock.mkdir()
    other = tmp_path / "kiln-abc123"  # an older kiln's name: not recognisably a workspace
    other.mkdir()
    (other / LOCK_NAME).touch()
    link = tmp_path / f"{PREFIX}link"
    link.symlink_to(abandoned_workspace(tmp_path / "elsewhere"))
    assert remove_abandoned(tmp_path) == []
    assert no_lock.exists() and other.exists() and (link / "blobs").exists()


def test_a_workspace_whose_lock_is_a_directory_is_not_kilns_and_is_kept(tmp_path: Path) -> None:
    # A directory takes a flock as a file does: it must not pass for a free lock.
    other = tmp_path / f"{PREFIX}other"
    (other / LOCK_NAME).mkdir(parents=True)
    assert remove_abandoned(tmp_path) == []
    assert (other / LOCK_NAME).is_dir()


def test_a_directory_named_like_an_unfinished_file_is_kept_and_the_stale_files_go(
        tmp_path: Path) -> None:
    (tmp_path / ".abc.1.partial").mkdir()
    (tmp_path / ".abc.1.partial" / "inside").write_text("not kiln's\n")
    (tmp_path / ".layer-x.tmp").write_bytes(b"half a layer")
    (tmp_path / ".abc.2.partial").write_bytes(b"half a blob")
    removed = remove_stale_partials(tmp_path, ("*.partial", ".layer-*.tmp"))
    assert sorted(p.name for p in removed) == [".abc.2.partial", ".layer-x.tmp"]
    assert (tmp_path / ".abc.1.partial" / "inside").exists()


def test_an_abandoned_workspace_with_a_mount_inside_is_kept(tmp_path: Path) -> None:
    # rmtree would empty the mounted filesystem (a bind mount of the host's files, say).
    left = abandoned_workspace(tmp_path)
    remove = ("import sys; from pathlib import Path; from executor.workspace import "
              "remove_abandoned; sys.exit(len(remove_abandoned(Path(sys.argv[1]))))")
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           'mount -t tmpfs kiln-test "$1/blobs" && touch "$1/blobs/kept" && '
                           'exec "$2" -c "$3" "$4"', "sh", str(left), sys.executable, remove,
                           str(tmp_path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "something is mounted in it" in proc.stderr
    assert (left / "blobs" / "layer").exists()


def test_a_workspace_is_held_while_in_use_and_removed_after(tmp_path: Path) -> None:
    with temporary_workspace(tmp_path) as path:
        assert path.name.startswith(PREFIX)
        assert (path / LOCK_NAME).is_file()
        assert remove_abandoned(tmp_path) == []
        with temporary_workspace(tmp_path) as second:
            assert path.exists() and second != path
    assert list(tmp_path.iterdir()) == []
