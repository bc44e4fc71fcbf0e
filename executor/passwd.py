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
    """The passwd entry for a user name, or for a numeric uid; None when there is none.

    A number is only ever a uid and a name only ever a name, as runc's lookup takes them.
    """
    numeric = name.isdigit()
    for fields in _read_table(root, "/etc/passwd"):
        if len(fields) < 6 or fields[2 if numeric else 0] != name:
            continue
        try:
            return PasswdEntry(fields[0], int(fields[2]), int(fields[3]), fields[5] or "/")
        except ValueError:
            continue
    return None


def _lookup_gid(root: Path, name: str) -> int | None:
    """The gid of a group name, or None when /etc/group (or the file) has no such group."""
    for fields in _read_table(root, "/etc/group"):
        if len(fields) >= 3 and fields[0] == name and fields[2].isdigit():
            return int(fields[2])
    return None


def lookup_group(root: Path, name: str) -> int:
    """The gid of a group name or number; UnknownUserError when the image has no such group."""
    if name.isdigit():
        return int(name)
    gid = _lookup_gid(root, name)
    if gid is None:
        raise UnknownUserError(f"unable to find group {name}")
    return gid


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
    user (``:group``) is root, and so is ``root`` where the image has no passwd entry for it
    (BuildKit gives 0:0 there). Any other name missing from passwd or group is
    UnknownUserError (README, departures: BuildKit makes the files root's without a word).
    """
    user, _, group = spec.partition(":")
    if not user:
        uid = gid = 0
    elif user.isdigit():
        uid = gid = int(user)
    else:
        entry = lookup_user(root, user)
        if entry is None and user != "root":  # root is 0:0 even with no passwd (scratch)
            raise UnknownUserError(f"unable to find user {user}: no matching entries in "
                                   "passwd file")
        uid, gid = (entry.uid, entry.gid) if entry is not None else (0, 0)
    if group:
        gid = 0 if group == "root" and _lookup_gid(root, group) is None \
            else lookup_group(root, group)
    return uid, gid


def _fast_id(text: str) -> int | None:
    """A uid or gid given as a number or as ``root``, which BuildKit takes without a lookup."""
    if text == "root":
        return 0
    return int(text) if text.isdigit() else None


def _home_of(root: Path, uid: int) -> str:
    """HOME as runc sets it: the uid's passwd entry's home directory, else ``/``."""
    entry = lookup_user(root, str(uid))
    return entry.home if entry is not None else "/"


def resolve_identity(root: Path, spec: str) -> Identity:
    """Who a RUN runs as for a ``USER`` value (``""`` when there is none), as BuildKit decides.

    - No USER: uid 0, found in passwd if it is there; an image with no ``/etc/passwd`` (a
      ``FROM scratch`` stage with a static shell) still runs as 0:0 with HOME ``/``.
    - ``uid:gid`` where both are numbers or ``root``: taken as they are, without a lookup, so
      ``root:root`` works where there is no passwd file.
    - Otherwise the user is looked up: a number missing from passwd is allowed (gid 0, HOME
      ``/``); a name missing from it is an error, ``root`` included (BuildKit's own message).
      A group given by number is allowed when missing; by name it must exist. Without a
      group, the groups that list the user are its supplementary groups.
    """
    user, sep, group = spec.partition(":")
    if not spec:
        entry = lookup_user(root, "0")
        if entry is None:
            return Identity(uid=0, gid=0, groups=(0,), home="/")
        return Identity(uid=0, gid=entry.gid,
                        groups=supplementary_groups(root, entry.name, entry.gid),
                        home=entry.home)
    fast_uid, fast_gid = _fast_id(user), _fast_id(group)
    if sep and fast_uid is not None and fast_gid is not None:
        return Identity(uid=fast_uid, gid=fast_gid, groups=(fast_gid,),
                        home=_home_of(root, fast_uid))
    entry = lookup_user(root, user)
    if entry is None:
        if not user.isdigit():
            raise UnknownUserError(f"unable to find user {user}: no matching entries in "
                                   "passwd file")
        entry = PasswdEntry(user, int(user), 0, "/")
        named = False
    else:
        named = True
    if not group:
        groups = (supplementary_groups(root, entry.name, entry.gid) if named
                  else (entry.gid,))
        return Identity(uid=entry.uid, gid=entry.gid, groups=groups, home=entry.home)
    gid = int(group) if group.isdigit() else _lookup_gid(root, group)
    if gid is None:
        raise UnknownUserError(f"unable to find group {group}: no matching entries in group "
                               "file")
    return Identity(uid=entry.uid, gid=gid, groups=(gid,), home=entry.home)


def file_owner(root: Path, spec: str) -> tuple[int, int]:
    """Owner of what WORKDIR creates under ``USER spec``, by BuildKit's rule for file changes.

    Unlike a RUN's user, nothing here fails: a number (or ``root``) is taken as uid and gid
    both (``USER 1234`` gives 1234:1234), a name is looked up in passwd and gives 0:0 when it
    is missing (``USER root`` in an image with no passwd); a group, when given, replaces the
    gid if it is a number or a name the image has.
    """
    user, _, group = spec.partition(":")
    uid = gid = 0
    fast = _fast_id(user)
    if fast is not None:
        uid = gid = fast
    else:
        entry = lookup_user(root, user) if user else None
        if entry is not None:
            uid, gid = entry.uid, entry.gid
    if group:
        fast = _fast_id(group)
        named = fast if fast is not None else _lookup_gid(root, group)
        if named is not None:
            gid = named
    return uid, gid
