"""Who a RUN runs as, and who owns what WORKDIR creates, by BuildKit's rules (found by building
with BuildKit v0.32: executor/oci GetUser for RUN, the file operations' user for WORKDIR)."""

from __future__ import annotations

from pathlib import Path

import pytest

from executor.passwd import UnknownUserError, file_owner, resolve_identity
from executor.sandbox import Identity

PASSWD = "root:x:0:0:root:/root:/bin/sh\nkiln:x:1000:1000::/home/kiln:/bin/sh\n"
GROUP = "root:x:0:\nkiln:x:1000:\nstaff:x:50:kiln\n"


@pytest.fixture
def image(tmp_path: Path) -> Path:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text(PASSWD)
    (tmp_path / "etc/group").write_text(GROUP)
    return tmp_path


@pytest.fixture
def bare(tmp_path: Path) -> Path:
    """An image with no /etc/passwd or /etc/group at all (a FROM scratch stage)."""
    return tmp_path


@pytest.mark.parametrize(("spec", "identity"), [
    ("", Identity(0, 0, (0,), "/root")),
    ("root", Identity(0, 0, (0,), "/root")),
    ("kiln", Identity(1000, 1000, (1000, 50), "/home/kiln")),
    ("1000", Identity(1000, 1000, (1000, 50), "/home/kiln")),
    ("1234", Identity(1234, 0, (0,), "/")),
    ("kiln:staff", Identity(1000, 50, (50,), "/home/kiln")),
    ("kiln:77", Identity(1000, 77, (77,), "/home/kiln")),
    ("1000:55", Identity(1000, 55, (55,), "/home/kiln")),
    ("root:root", Identity(0, 0, (0,), "/root")),
])
def test_a_run_identity_in_an_image_with_passwd(image: Path, spec: str,
                                                identity: Identity) -> None:
    assert resolve_identity(image, spec) == identity


@pytest.mark.parametrize(("spec", "identity"), [
    ("", Identity(0, 0, (0,), "/")),
    ("0", Identity(0, 0, (0,), "/")),
    ("1234", Identity(1234, 0, (0,), "/")),
    ("1234:55", Identity(1234, 55, (55,), "/")),
    ("root:root", Identity(0, 0, (0,), "/")),
    ("root:7", Identity(0, 7, (7,), "/")),
])
def test_a_run_identity_without_passwd_needs_no_lookup(bare: Path, spec: str,
                                                       identity: Identity) -> None:
    assert resolve_identity(bare, spec) == identity


@pytest.mark.parametrize(("spec", "message"), [
    ("root", "unable to find user root: no matching entries in passwd file"),
    ("app", "unable to find user app: no matching entries in passwd file"),
    ("1234:staff", "unable to find group staff: no matching entries in group file"),
])
def test_a_name_the_image_lacks_fails_the_run(bare: Path, spec: str, message: str) -> None:
    with pytest.raises(UnknownUserError, match=f"^{message}$"):
        resolve_identity(bare, spec)


@pytest.mark.parametrize(("spec", "owner"), [
    ("root", (0, 0)),
    ("kiln", (1000, 1000)),
    ("1234", (1234, 1234)),
    ("1234:55", (1234, 55)),
    ("kiln:staff", (1000, 50)),
    ("nosuchuser", (0, 0)),
    ("kiln:nosuchgroup", (1000, 1000)),
])
def test_workdir_owner_with_passwd(image: Path, spec: str, owner: tuple[int, int]) -> None:
    assert file_owner(image, spec) == owner


@pytest.mark.parametrize(("spec", "owner"), [
    ("", (0, 0)), ("root", (0, 0)), ("1234", (1234, 1234)), ("nobody:7", (0, 7)),
])
def test_workdir_owner_without_passwd_never_fails(bare: Path, spec: str,
                                                  owner: tuple[int, int]) -> None:
    assert file_owner(bare, spec) == owner
