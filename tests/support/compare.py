"""Compare two images as a person would: the files a runtime sees and the config it obeys.

Two builders never produce the same bytes (timestamps, tar order, compression), so images are
compared through a normalised description instead: for every path of the unpacked rootfs its
type, mode, owner, size, sha256, link target and xattrs; the config fields a container runtime
acts on; and the number of layers. Modification times are left out (no two builds agree on
them) unless a caller names paths whose mtime is part of the contract (ADD of a URL).

A description can be made relative to the base image's own description: then ``files`` holds
only the paths that are new or differ from the base, and ``removed`` the base paths that are
gone. Two deltas against the same base are equal exactly when the full trees are, and a delta
is short enough to read in a fixture.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tests.support.layers import diff_layer_summaries

#: The image config fields compared, in the order the description lists them.
CONFIG_FIELDS = ("Env", "Cmd", "Entrypoint", "WorkingDir", "User", "Labels", "ExposedPorts",
                 "Volumes", "StopSignal", "Healthcheck", "Shell", "OnBuild")

Description = dict[str, Any]
FileInfo = dict[str, Any]


def _file_type(mode: int) -> str:
    for test, name in ((stat.S_ISREG, "file"), (stat.S_ISDIR, "dir"), (stat.S_ISLNK, "symlink"),
                       (stat.S_ISFIFO, "fifo"), (stat.S_ISCHR, "chardev"),
                       (stat.S_ISBLK, "blockdev"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "unknown"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _xattrs(path: Path) -> dict[str, str]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out: dict[str, str] = {}
    for name in sorted(names):
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
        out[name] = value.hex()
    return out


def describe_file(path: Path, mtime: bool = False) -> FileInfo:
    """One path's normalised description (no mtime unless asked)."""
    st = path.lstat()
    kind = _file_type(st.st_mode)
    info: FileInfo = {"type": kind, "mode": f"{stat.S_IMODE(st.st_mode):04o}",
                      "uid": st.st_uid, "gid": st.st_gid}
    if kind == "file":
        info["size"] = st.st_size
        info["sha256"] = _sha256(path)
    elif kind == "symlink":
        info["target"] = os.readlink(path)
    elif kind in ("chardev", "blockdev"):
        info["rdev"] = f"{os.major(st.st_rdev)},{os.minor(st.st_rdev)}"
    xattrs = _xattrs(path)
    if xattrs:
        info["xattrs"] = xattrs
    if mtime:
        info["mtime"] = int(st.st_mtime)
    return info


def describe_rootfs(rootfs: Path, mtime_paths: Iterable[str] = ()) -> dict[str, FileInfo]:
    """Every path below ``rootfs`` (as ``/etc/motd``) mapped to its description.

    Files that are hard links of each other carry ``hardlink_group``, the first of their paths
    in sorted order, so a builder that turns links into copies shows in the comparison.
    """
    with_mtime = set(mtime_paths)
    files: dict[str, FileInfo] = {}
    # Hard links: every path of an inode that has several names here, tagged with the first.
    inodes: dict[tuple[int, int], list[str]] = {}
    for directory, dirnames, filenames in os.walk(rootfs):
        dirnames.sort()
        for name in [*dirnames, *sorted(filenames)]:
            full = Path(directory) / name
            rel = "/" + full.relative_to(rootfs).as_posix()
            files[rel] = describe_file(full, mtime=rel in with_mtime)
            st = full.lstat()
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
    for paths in inodes.values():
        if len(paths) > 1:
            first = min(paths)
            for rel in paths:
                files[rel]["hardlink_group"] = first
    return dict(sorted(files.items()))


def normalise_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The compared config fields; absent, null and empty collections all become null.

    Docker writes ``null`` where buildah writes ``[]`` or ``{}``; neither changes what a
    runtime does, so the description does not tell them apart.
    """
    out: dict[str, Any] = {}
    for key in CONFIG_FIELDS:
        value = config.get(key)
        out[key] = value if value not in (None, [], {}, "") else None
    return out


def describe_image(rootfs: Path, config: Mapping[str, Any], layers: int,
                   base: Description | None = None, mtime_paths: Iterable[str] = (),
                   replace: Mapping[str, str] | None = None) -> Description:
    """The normalised description of an unpacked image.

    ``config`` is the image config's ``config`` object; ``base`` a full description of the
    base image to make ``files`` a delta against; ``replace`` maps strings (a registry address)
    to placeholders throughout the config.
    """
    files = describe_rootfs(rootfs, mtime_paths)
    config_part = normalise_config(config)
    if replace:
        config_part = _replace_strings(config_part, replace)
    description: Description = {"layers": layers, "config": config_part}
    if base is None:
        description["files"] = files
        return description
    base_files: dict[str, FileInfo] = base["files"]
    description["files"] = {p: i for p, i in files.items() if base_files.get(p) != i}
    description["removed"] = sorted(_topmost(p for p in base_files if p not in files))
    return description


def _topmost(paths: Iterable[str]) -> list[str]:
    """Removed paths without those under a removed directory (listed once, at the top)."""
    out: list[str] = []
    for path in sorted(paths):
        if out and path.startswith(out[-1].rstrip("/") + "/"):
            continue
        out.append(path)
    return out


def _replace_strings(value: Any, replace: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        for old, new in replace.items():
            value = value.replace(old, new)
        return value
    if isinstance(value, list):
        return [_replace_strings(v, replace) for v in value]
    if isinstance(value, dict):
        return {_replace_strings(k, replace): _replace_strings(v, replace)
                for k, v in value.items()}
    return value


def _show(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def diff_descriptions(expected: Description, actual: Description,
                      labels: tuple[str, str] = ("expected", "kiln")) -> str:
    """A readable list of differences, one line each; empty when the images agree."""
    want, got = labels
    lines: list[str] = []
    if expected.get("layers") != actual.get("layers"):
        lines.append(f"layers: {want} {expected.get('layers')}, {got} {actual.get('layers')}")
    exp_cfg, act_cfg = expected.get("config", {}), actual.get("config", {})
    for key in CONFIG_FIELDS:
        if exp_cfg.get(key) != act_cfg.get(key):
            lines.append(f"config {key}: {want} {_show(exp_cfg.get(key))}, "
                         f"{got} {_show(act_cfg.get(key))}")
    exp_files, act_files = expected.get("files", {}), actual.get("files", {})
    for path in sorted(set(exp_files) | set(act_files)):
        e, a = exp_files.get(path), act_files.get(path)
        if e == a:
            continue
        if a is None:
            lines.append(f"{path}: only in {want} ({_show(e)})")
        elif e is None:
            lines.append(f"{path}: only in {got} ({_show(a)})")
        else:
            parts = [f"{k} {want} {_show(e.get(k))}, {got} {_show(a.get(k))}"
                     for k in sorted(set(e) | set(a)) if e.get(k) != a.get(k)]
            lines.append(f"{path}: " + "; ".join(parts))
    exp_removed, act_removed = set(expected.get("removed", [])), set(actual.get("removed", []))
    lines += [f"{p}: removed in {want} only" for p in sorted(exp_removed - act_removed)]
    lines += [f"{p}: removed in {got} only" for p in sorted(act_removed - exp_removed)]
    if "layer_entries" in expected or "layer_entries" in actual:
        lines += diff_layer_summaries(expected.get("layer_entries", []),
                                      actual.get("layer_entries", []), labels)
    return "\n".join(lines)


def unified_diff(expected: Description, actual: Description) -> str:
    """The two descriptions as a unified JSON diff (for when the line list is not enough)."""
    a = json.dumps(expected, indent=1, sort_keys=True).splitlines()
    b = json.dumps(actual, indent=1, sort_keys=True).splitlines()
    return "\n".join(difflib.unified_diff(a, b, "expected", "actual", lineterm=""))
