"""Users and groups by name, from the image's own ``/etc/passwd`` and ``/etc/group``.

``USER app`` and ``COPY --chown=app:staff`` mean the image's ``app``, never the build machine's,
so names are looked up in the files under the root being built.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from executor.sandbox import Identity
from snapshot.rootpath import resolve_in_root


class UnknownUserError(LookupError):
    """A user or group name that the image does not define."""


@dataclass(frozen=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str


def _read_table(root: Path, path: str) -> list[list[str]]:
    try:
        text = resolve_in_root(root, path).read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return []
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def lookup_user(root: Path, name: str) -> PasswdEntry | None:
    """The passwd entry for a user name or numeric uid, or None when there is none."""
    for fields in _read_table(root, "/etc/passwd"):
        if len(fields) >= 6 and (fields[0] == name or fields[2] == name):
            try:
                return PasswdEntry(fields[0], int(fields[2]), int(fields[3]), fields[5] or "/")
            except ValueError:
                continue
    return None


def lookup_group(root: Path, name: str) -> int:
    """The gid of a group name or number; UnknownUserError when the image has no such group."""
    if name.isdigit():
        return int(name)
    for fields in _read_table(root, "/etc/group"):
        if len(fields) >= 3 and fields[0] == name and fields[2].isdigit():
            return int(fields[2])
    raise UnknownUserError(f"unable to find group {name}")


def supplementary_groups(root: Path, user: str, primary: int) -> tuple[int, ...]:
    """Groups listing ``user`` as a member, plus the primary group, as Docker sets them."""
    groups = [primary]
    for fields in _read_table(root, "/etc/group"):
        if len(fields) >= 4 and user in fields[3].split(",") and fields[2].isdigit():
            gid = int(fields[2])
            if gid not in groups:
                groups.append(gid)
    return tuple(groups)


def owner_ids(root: Path, spec: str) -> tuple[int, int]:
    """The uid and gid that ``--chown=SPEC`` gives, which WORKDIR also gives under ``USER SPEC``.

    BuildKit's rule: a numeric user without a group means uid:uid, whatever passwd says; a
    user name means its passwd uid and primary gid; ``:group`` overrides the gid; an empty
    user (``:group``) is root. A name missing from passwd or group is UnknownUserError.
    """
    user, _, group = spec.partition(":")
    if not user:
        uid = gid = 0
    elif user.isdigit():
        uid = gid = int(user)
    else:
        entry = lookup_user(root, user)
        if entry is None:
            raise UnknownUserError(f"unable to find user {user}: no matching entries in "
                                   "passwd file")
        uid, gid = entry.uid, entry.gid
    if group:
        gid = lookup_group(root, group)
    return uid, gid


def resolve_identity(root: Path, spec: str) -> Identity:
    """``USER`` value (``name``, ``uid``, ``name:group``, ``uid:gid``) as an Identity.

    A numeric uid missing from passwd is allowed (gid 0, home /), as Docker allows it; a name
    missing from passwd is an error.
    """
    user, _, group = spec.partition(":")
    entry = lookup_user(root, user)
    if entry is None:
        if not user.isdigit():
            raise UnknownUserError(f"unable to find user {user}: no matching entries in "
                                   "passwd file")
        entry = PasswdEntry(user, int(user), 0, "/")
    gid = lookup_group(root, group) if group else entry.gid
    groups = (gid,) if group else supplementary_groups(root, entry.name, entry.gid)
    return Identity(uid=entry.uid, gid=gid, groups=groups, home=entry.home)
