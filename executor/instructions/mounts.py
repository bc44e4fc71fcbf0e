"""RUN --mount: what BuildKit mounts for one command, and how kiln keeps it out of the image.

Each ``--mount`` becomes a :class:`executor.sandbox.Mount` that the sandboxed child mounts in its
own private mount namespace, so the parent's snapshot never sees what is mounted, only the mount
point. Mount points this RUN had to create are removed afterwards (parents too, when the
command left them empty) and the parent directory's times restored, so they do not leak into
the layer; a target that existed before is left as it was, as BuildKit leaves it.

- ``type=bind`` (the default): ``source`` from the build context (``.dockerignore`` applied) or
  from ``from=<stage|image>``; read-only unless ``rw``, and then writes go to a scratch copy
  that is thrown away.
- ``type=cache``: a directory under ``<kiln dir>/cache`` keyed by ``id`` (default: the target),
  kept between RUNs and, with ``--kaniko-dir``, between builds; never part of a layer.
  ``sharing=locked`` serialises users of the same cache with a file lock.
- ``type=tmpfs``: an empty tmpfs (``size=`` bytes).
- ``type=secret``: a ``--secret`` value as a read-only file (default ``/run/secrets/<id>``,
  mode 0400) and/or an environment variable (``env=``); never in a layer, the config or the
  history. A missing secret is skipped unless ``required=true``.
- ``type=ssh`` is refused: kiln has no SSH agent forwarding.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import posixpath
import shutil
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from executor.dockerfile.parse import Instruction
from executor.instructions.placed import Placement, PlacementError, placed
from executor.instructions.state import StageState
from executor.sandbox import Mount
from snapshot.errors import SnapshotError
from snapshot.rootpath import resolve_in_root

_TYPES = ("bind", "cache", "tmpfs", "secret", "ssh")
_KEYS = frozenset({"type", "id", "target", "dst", "destination", "source", "src", "from",
                   "readonly", "ro", "readwrite", "rw", "required", "sharing", "mode", "uid",
                   "gid", "size", "env"})
_BOOLS = frozenset({"readonly", "ro", "readwrite", "rw", "required"})


@dataclass(frozen=True)
class MountSpec:
    """One ``--mount=...`` value, parsed and checked."""

    type: str
    target: str | None
    source: str | None = None
    from_ref: str | None = None
    id: str | None = None
    readonly: bool = False
    required: bool = False
    sharing: str = "shared"
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    env: str | None = None


def parse_mount(text: str, workdir: str) -> MountSpec:
    """Parse BuildKit's CSV mount syntax; ValueError with the reason for bad input."""
    values: dict[str, str] = {}
    for field_ in text.split(","):
        field_ = field_.strip()
        if not field_:
            continue
        key, eq, value = field_.partition("=")
        key = key.lower()
        if key not in _KEYS:
            raise ValueError(f"RUN --mount: unexpected key '{key}' in '{field_}'")
        if not eq:
            if key not in _BOOLS:
                raise ValueError(f"RUN --mount: invalid field '{field_}' must be a key=value "
                                 "pair")
            value = "true"
        values[_canonical(key)] = value
    kind = values.pop("type", "bind").lower()
    if kind not in _TYPES:
        raise ValueError(f"unsupported mount type \"{kind}\"")
    if kind == "ssh":
        raise ValueError("RUN --mount=type=ssh is not supported: kiln has no SSH agent "
                         "forwarding")
    readonly = _bool(values, "readonly", kind in ("bind", "secret"))
    if "readwrite" in values:
        readonly = not _bool(values, "readwrite", False)
    target = values.get("target")
    if target is not None:
        target = posixpath.normpath(posixpath.join(workdir, target))
    source = values.get("source")
    mount_id = values.get("id")
    if kind == "secret":
        if mount_id is None and target is not None:
            mount_id = posixpath.basename(target)
        if not mount_id:
            raise ValueError("RUN --mount=type=secret needs id= (or a target to name it)")
        if target is None and "env" not in values:
            target = f"/run/secrets/{mount_id}"
    elif target is None:
        raise ValueError(f"RUN --mount=type={kind} needs target=")
    if target == "/":
        raise ValueError("RUN --mount cannot mount over /")
    sharing = values.get("sharing", "shared").lower()
    if sharing not in ("shared", "private", "locked"):
        raise ValueError(f"unsupported sharing value \"{sharing}\"")
    for key, allowed in (("from", ("bind", "cache")), ("source", ("bind", "cache")),
                         ("sharing", ("cache",)), ("size", ("tmpfs",)),
                         ("env", ("secret",)), ("required", ("secret",)),
                         ("mode", ("cache", "secret")), ("uid", ("cache", "secret")),
                         ("gid", ("cache", "secret")), ("id", ("cache", "secret"))):
        if key in values and kind not in allowed:
            raise ValueError(f"RUN --mount: {key}= is not valid for type={kind}")
    return MountSpec(
        type=kind, target=target, source=source, from_ref=values.get("from"),
        id=mount_id if kind == "secret" else (mount_id or target),
        readonly=readonly, required=_bool(values, "required", False), sharing=sharing,
        mode=_number(values, "mode", 8), uid=_number(values, "uid", 10),
        gid=_number(values, "gid", 10), size=_size(values.get("size")), env=values.get("env"))


def _canonical(key: str) -> str:
    return {"dst": "target", "destination": "target", "src": "source", "ro": "readonly",
            "rw": "readwrite"}.get(key, key)


def _bool(values: dict[str, str], key: str, default: bool) -> bool:
    if key not in values:
        return default
    text = values[key].lower()
    if text not in ("true", "false", "1", "0"):
        raise ValueError(f"invalid value for {key}: {values[key]}")
    return text in ("true", "1")


def _number(values: dict[str, str], key: str, base: int) -> int | None:
    if key not in values:
        return None
    try:
        return int(values[key], base)
    except ValueError:
        raise ValueError(f"invalid value for {key}: {values[key]}") from None


_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "m": 1 << 20, "mb": 1 << 20,
          "g": 1 << 30, "gb": 1 << 30}


def _size(text: str | None) -> int | None:
    if text is None:
        return None
    lowered = text.lower().strip()
    digits = lowered.rstrip("bkmg")
    unit = lowered[len(digits):]
    if not digits.isdigit() or unit not in _UNITS:
        raise ValueError(f"invalid value for size: {text}")
    return int(digits) * _UNITS[unit]


# --- preparing mounts for one RUN -----------------------------------------------------------

@dataclass
class PreparedMounts:
    """The mounts of one RUN and what must be undone after it.

    With real mounts (a sandbox root, or in place with CAP_SYS_ADMIN) ``mounts`` are mounted in
    the command's own namespace; without them (a pod) ``placements`` are put in place around
    the command by :mod:`executor.instructions.placed`. ``settled`` names the paths (relative
    to the root) whose stat only the preparing moved: their ctime alone is not a change.
    """

    mounts: list[Mount] = field(default_factory=list)
    placements: list[Placement] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    created: list[Path] = field(default_factory=list)  # mount points made for this RUN
    parent_times: dict[Path, tuple[int, int]] = field(default_factory=dict)
    settled: list[str] = field(default_factory=list)
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    nested: frozenset[str] = frozenset()  # targets that lie inside another mount's target
    locked: set[str] = field(default_factory=set)  # cache locks this RUN holds
    holding: frozenset[str] = frozenset()  # targets that hold another mount's target


@contextlib.contextmanager
def prepared_mounts(state: StageState, inst: Instruction, specs: list[MountSpec], *,
                    emulate: bool = False) -> Iterator[PreparedMounts]:
    """Sources, caches and mount points for ``specs``; all undone when the block ends.

    ``emulate``: no mount(2) is possible (in place, in a pod): the mounts' content is put in
    place for the block instead, and taken away again after it.
    """
    targets = [s.target for s in specs if s.target is not None]
    prepared = PreparedMounts(nested=_nested(targets), holding=_holding(targets))
    try:  # placing, and undoing the placements as the stack closes
        with prepared.stack:
            try:
                for spec in sorted(specs, key=lambda s: (s.target or "").count("/")):
                    _prepare(state, inst, spec, prepared, emulate)
                if emulate and prepared.placements:
                    assert state.kiln_dir is not None
                    prepared.stack.enter_context(placed(state.root, state.kiln_dir,
                                                        prepared.placements, prepared.settled))
                yield prepared
            finally:
                _remove_mount_points(prepared)
    except PlacementError as exc:
        raise inst.error(str(exc)) from None


def _inside(path: str, directory: str) -> bool:
    return path != directory and path.startswith(directory.rstrip("/") + "/")


def _nested(targets: list[str]) -> frozenset[str]:
    return frozenset(t for t in targets if any(_inside(t, o) for o in targets))


def _holding(targets: list[str]) -> frozenset[str]:
    return frozenset(o for o in targets if any(_inside(t, o) for t in targets))


def _prepare(state: StageState, inst: Instruction, spec: MountSpec, prepared: PreparedMounts,
             emulate: bool) -> None:
    scratch = state.scratch_dir
    if spec.type == "secret":
        value = state.secrets.get(spec.id or "")
        if value is None:
            if spec.required:
                raise inst.error(f'secret "{spec.id}" is required but was not given '
                                 f"(--secret id={spec.id},...)")
            return
        if spec.env:
            prepared.env[spec.env] = value.decode("utf-8", "surrogateescape")
        if spec.target is None:
            return
        directory = Path(prepared.stack.enter_context(
            tempfile.TemporaryDirectory(prefix="kiln-secret-", dir=scratch)))
        source = directory / "secret"
        fd = os.open(source, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(fd, "wb") as handle:
            handle.write(value)
        os.chown(source, spec.uid or 0, spec.gid or 0)
        os.chmod(source, spec.mode if spec.mode is not None else 0o400)
        if emulate:
            _place(prepared, spec, "owned", source, readonly=False)
        else:
            _add(state, inst, prepared, spec, source, is_dir=False)
    elif spec.type == "tmpfs":
        if emulate:
            _place(prepared, spec, "empty", None, readonly=False)
        else:
            _add(state, inst, prepared, spec, None, is_dir=True)
    elif spec.type == "cache":
        source = _cache_dir(state, inst, spec)
        _lock_cache(prepared, spec, source, emulate)
        source = _cache_source(inst, spec, source)
        if emulate:
            _check_placed_once(inst, spec, prepared, source)
            _place(prepared, spec, "cache", source, readonly=False)
        else:
            _add(state, inst, prepared, spec, source, is_dir=source.is_dir())
    else:
        source, owned = _bind_source(state, inst, spec, prepared, emulate)
        if emulate:
            _place(prepared, spec, "owned" if owned else "copy", source,
                   readonly=spec.readonly)
        else:
            _add(state, inst, prepared, spec, source, is_dir=source.is_dir())


def _place(prepared: PreparedMounts, spec: MountSpec, how: str, source: Path | None, *,
           readonly: bool) -> None:
    assert spec.target is not None
    prepared.placements.append(Placement(spec.target, how, source, readonly))


def _lock_cache(prepared: PreparedMounts, spec: MountSpec, source: Path, emulate: bool) -> None:
    """``sharing=locked`` waits for other users of the cache. Placed in the root, a cache can
    be in one place at a time, so ``shared`` and ``private`` wait too there (a concurrent
    build in the same kiln dir would otherwise find its store gone)."""
    lock_path = str(source) + ".lock"
    if lock_path in prepared.locked:
        return  # this RUN holds it already: a second flock would wait for the first forever
    if spec.sharing == "locked" or emulate:
        lock = prepared.stack.enter_context(open(lock_path, "a"))  # noqa: SIM115
        fcntl.flock(lock, fcntl.LOCK_EX)
        prepared.locked.add(lock_path)


def _check_placed_once(inst: Instruction, spec: MountSpec, prepared: PreparedMounts,
                       source: Path) -> None:
    """Placed by rename, a cache (or a part of it) can be at one target only."""
    for other in prepared.placements:
        if other.how == "cache" and other.source is not None and (
                other.source == source or other.source in source.parents
                or source in other.source.parents):
            raise inst.error(f"RUN --mount=type=cache: the cache {spec.id} at two targets "
                             f"({other.target} and {spec.target}): without mount(2), in a "
                             "container with no CAP_SYS_ADMIN, a cache can be in one place at "
                             "a time")


def _cache_source(inst: Instruction, spec: MountSpec, cache: Path) -> Path:
    """The part of the cache to mount: ``source=`` is a path inside it (BuildKit's subpath),
    resolved inside the cache so that no ``..`` or symlink leads out; it must exist. With
    ``from=``, ``source`` is the path in the other stage that seeded the cache instead."""
    if spec.source is None or spec.from_ref is not None:
        return cache
    try:
        path = resolve_in_root(cache, spec.source)
    except SnapshotError as exc:
        raise inst.error(f"RUN --mount=type=cache source {spec.source!r}: {exc}") from None
    if not os.path.lexists(path):
        shown = "/" + posixpath.normpath("/" + spec.source).lstrip("/")
        raise inst.error(f"RUN --mount=type=cache source {spec.source!r}: {shown}: no such "
                         "file or directory in the cache")
    return path


def _cache_dir(state: StageState, inst: Instruction, spec: MountSpec) -> Path:
    if state.kiln_dir is None:
        raise inst.error("RUN --mount=type=cache needs kiln's state directory")
    base = state.kiln_dir / "cache"
    base.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256((spec.id or "").encode()).hexdigest()[:32]
    directory = base / key
    if not directory.exists():
        fresh = Path(tempfile.mkdtemp(prefix=".new-", dir=base))
        if spec.from_ref is not None:
            origin = _from_path(state, inst, spec)
            if origin.is_dir():
                shutil.copytree(origin, fresh, symlinks=True, dirs_exist_ok=True)
        os.chmod(fresh, spec.mode if spec.mode is not None else 0o755)
        os.chown(fresh, spec.uid or 0, spec.gid or 0)
        os.rename(fresh, directory)
    return directory


def _from_path(state: StageState, inst: Instruction, spec: MountSpec) -> Path:
    assert spec.from_ref is not None
    if state.source_root is None:
        raise inst.error("RUN --mount from= is not available here")
    other = state.source_root(inst, state.expand(inst, spec.from_ref))
    try:
        path = resolve_in_root(other, spec.source or "/")
    except SnapshotError as exc:
        raise inst.error(f"RUN --mount: {exc}") from None
    if not os.path.lexists(path):
        raise inst.error(f"RUN --mount from={spec.from_ref}: {spec.source or '/'}: no such "
                         "file or directory")
    return path


def _bind_source(state: StageState, inst: Instruction, spec: MountSpec,
                 prepared: PreparedMounts, emulate: bool) -> tuple[Path, bool]:
    """The path to bind and whether it is kiln's own scratch copy: the source itself when
    nothing is filtered and the mount is read-only (``emulate``: the placing copies it
    anyway), else a copy, whose writes are thrown away. A bind that holds another mount's
    target is a copy too: the nested mount point is made in it."""
    if spec.from_ref is not None:
        path = _from_path(state, inst, spec)
        filtered = False
        context_rel: str | None = None
    else:
        rel = posixpath.normpath("/" + (spec.source or ".")).lstrip("/") or "."
        path = state.context.root / rel
        real_root = os.path.realpath(state.context.root)
        real = os.path.realpath(path)
        if real != real_root and not real.startswith(real_root + os.sep):
            raise inst.error(f"RUN --mount source {spec.source!r} is outside the build context")
        if not os.path.exists(path) or (rel != "." and state.context.ignore.excluded(rel)):
            raise inst.error(f"RUN --mount source {spec.source!r}: no such file or directory "
                             "in the build context")
        filtered = bool(state.context.ignore.patterns) and os.path.isdir(path)
        context_rel = rel
    if not filtered and (emulate or (spec.readonly and spec.target not in prepared.holding)):
        return Path(path), False
    copy = Path(prepared.stack.enter_context(
        tempfile.TemporaryDirectory(prefix="kiln-bind-", dir=state.scratch_dir))) / "src"
    _copy_filtered(state, Path(path), copy, context_rel)
    return copy, True


def _copy_filtered(state: StageState, src: Path, dst: Path, context_rel: str | None) -> None:
    if not src.is_dir():
        shutil.copy2(src, dst, follow_symlinks=True)
        return

    def ignored(directory: str, names: list[str]) -> list[str]:
        if context_rel is None:
            return []
        rel_dir = os.path.relpath(directory, src)
        out = []
        for name in names:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            full = rel if context_rel == "." else f"{context_rel}/{rel}"
            if state.context.ignore.excluded(full):
                out.append(name)
        return out

    shutil.copytree(src, dst, symlinks=True, ignore=ignored)


def _add(state: StageState, inst: Instruction, prepared: PreparedMounts, spec: MountSpec,
         source: Path | None, *, is_dir: bool) -> None:
    assert spec.target is not None
    try:
        point = resolve_in_root(state.root, spec.target)
    except SnapshotError as exc:
        raise inst.error(f"RUN --mount target {spec.target}: {exc}") from None
    if point == state.root:
        raise inst.error("RUN --mount: cannot mount over /")
    nested = spec.target in prepared.nested
    if not nested:
        _make_mount_point(state, inst, point, is_dir, prepared)
    # A mount point inside another mount's target is made in that mount once it is mounted
    # (in the cache, the tmpfs or the bind's copy), as BuildKit makes it; never in the root.
    prepared.mounts.append(Mount(target=point, source=source, readonly=spec.readonly,
                                 tmpfs_size=spec.size,
                                 create=("dir" if is_dir else "file") if nested else None))


def _make_mount_point(state: StageState, inst: Instruction, point: Path, is_dir: bool,
                      prepared: PreparedMounts) -> None:
    if os.path.lexists(point):
        if is_dir and not point.is_dir():
            raise inst.error(f"RUN --mount target /{point.relative_to(state.root)} is not a "
                             "directory")
        return
    missing: list[Path] = []
    probe = point
    while not os.path.lexists(probe):
        missing.append(probe)
        probe = probe.parent
    if not probe.is_dir() or probe.is_symlink():
        raise inst.error(f"RUN --mount target /{point.relative_to(state.root)}: "
                         f"/{probe.relative_to(state.root)} is not a directory")
    info = os.lstat(probe)
    prepared.parent_times.setdefault(probe, (info.st_atime_ns, info.st_mtime_ns))
    prepared.settled.append(os.path.relpath(probe, state.root))
    for path in reversed(missing):
        if path == point and not is_dir:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
        else:
            path.mkdir(mode=0o755)
            os.chmod(path, 0o755)
        prepared.created.append(path)


def _remove_mount_points(prepared: PreparedMounts) -> None:
    """Remove the mount points this RUN created, deepest first, if the command left them as
    they were; then give their parent back its times."""
    for path in reversed(prepared.created):
        with contextlib.suppress(OSError):
            info = os.lstat(path)
            if stat.S_ISDIR(info.st_mode):
                path.rmdir()
            elif info.st_size == 0:
                path.unlink()
    for parent, (atime, mtime) in prepared.parent_times.items():
        with contextlib.suppress(OSError):
            os.utime(parent, ns=(atime, mtime), follow_symlinks=False)
