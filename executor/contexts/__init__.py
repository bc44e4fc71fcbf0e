"""Build contexts from wherever kaniko users keep them, turned into a local directory.

On Kubernetes there is often no volume to share, so kaniko takes ``--context`` as a URL and
fetches it before the build. kiln takes the same syntax with the same meaning:

=======================================  ==================================================
``PATH``, ``dir://PATH``                 a directory, used where it is
``tar://PATH``, ``tar://stdin``          a tarball (plain, gzip or zstd) or standard input
``https://HOST/ctx.tar.gz``              a tarball, downloaded
``git://HOST/REPO.git[#REF[#COMMIT]]``   cloned over ``$GIT_PULL_METHOD`` (``https``, the
                                         default, or ``http``; kiln adds ``git`` for the git
                                         protocol itself)
``https://HOST/REPO.git[#REF[#COMMIT]]``  (kiln) cloned over that URL as written
``s3://BUCKET/KEY``, ``gs://BUCKET/OBJ``  a tarball in an object store
=======================================  ==================================================

Everything that is not a directory lands in ``<kaniko-dir>/buildcontext`` (kaniko's path; a
temporary directory for a sandbox build without ``--kaniko-dir``). Tarballs are streamed into
``snapshot.extract.extract_layer``, never held whole in memory and never written to disk as a
tarball, so a hostile one meets the same walls as a hostile image layer: no entry lands outside
the context directory. Git is the ``git`` command, not an in-process library: it clones a 500 MB
history in about 30 MB (see ``bench/contexts.py``), where kaniko's in-process go-git (and, here,
dulwich) hold the pack in memory. ``--context-sub-path`` then picks a directory inside, and a
relative ``--dockerfile`` is looked up there, as kaniko does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import stat
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from executor.errors import ContextError, OptionsError

if TYPE_CHECKING:
    from executor.options import BuildOptions, GitOptions

log = logging.getLogger("kiln")

#: The schemes ``--context`` takes besides a plain path, in kaniko's order of mention.
SCHEMES = ("dir://", "tar://", "git://", "https://", "http://", "s3://", "gs://")
BUILD_CONTEXT_DIR = "buildcontext"


def is_remote(context: str) -> bool:
    """True when ``--context`` names something to fetch rather than a local directory."""
    return "://" in context and not context.startswith("dir://")


def display(source: str) -> str:
    """``source`` fit for a message: a password or token in the URL is replaced by ``***``."""
    parts = urllib.parse.urlsplit(source)
    if parts.password is None and not (parts.username and parts.scheme in ("http", "https")):
        return source
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"***@{host}"))


def is_git_url(source: str) -> bool:
    """``git://...``, or an ``http(s)://`` URL whose path ends in ``.git`` (before any ``#``)."""
    if source.startswith("git://"):
        return True
    if not source.startswith(("https://", "http://")):
        return False
    path = urllib.parse.urlsplit(source.split("#", 1)[0]).path
    return path.rstrip("/").endswith(".git")


def fetch(source: str, target: Path, git: GitOptions) -> None:
    """Put the context ``source`` names into the empty directory ``target``."""
    scheme = source.split("://", 1)[0] + "://" if "://" in source else ""
    if scheme not in SCHEMES or scheme == "dir://":
        raise ContextError(f"--context {display(source)}: unknown build context prefix "
                           f"{scheme!r}; use a path or one of {', '.join(SCHEMES)}")
    if is_git_url(source):
        from executor.contexts import git as git_source

        git_source.clone(source, target, git)
        return
    from executor.contexts.tarball import unpack_tarball

    with _open_tarball(source) as stream:
        log.info("Unpacking build context from %s", display(source))
        unpack_tarball(stream, target, display(source))


@contextlib.contextmanager
def _open_tarball(source: str) -> Iterator[BinaryIO]:
    scheme, rest = source.split("://", 1)
    if scheme == "tar":
        from executor.contexts.tarball import open_tar_path

        with open_tar_path(rest, source) as stream:
            yield stream
    elif scheme in ("https", "http"):
        from executor.contexts.http import open_url

        with open_url(source, what=f"--context {display(source)}") as stream:
            yield stream
    elif scheme == "s3":
        from executor.contexts.s3 import open_s3_object

        with open_s3_object(source) as stream:
            yield stream
    else:
        from executor.contexts.gcs import open_gcs_object

        with open_gcs_object(source) as stream:
            yield stream


def sub_path(root: Path, sub: str, source: str) -> Path:
    """``root/sub``, which must be a directory that does not lead out of ``root``."""
    if not sub:
        return root
    path = root / sub.lstrip("/")
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if real != real_root and not real.startswith(real_root + os.sep):
        raise ContextError(f"--context-sub-path {sub}: leads outside the context "
                           f"{display(source)}")
    if not path.is_dir():
        raise ContextError(f"--context-sub-path {sub}: no such directory in {display(source)}")
    return path


@contextlib.contextmanager
def local_context(options: BuildOptions) -> Iterator[BuildOptions]:
    """``options`` with ``context`` and ``dockerfile`` as local paths, fetched if need be.

    A directory context comes back as it is, unless an in-place build would extract the base
    image over it: then it is copied to ``<kaniko-dir>/buildcontext`` first. A remote one is
    fetched there (the directory is emptied first: it is kiln's own place), or into a temporary
    directory for a sandbox build without ``--kaniko-dir``, removed afterwards.
    """
    on_root = context_on_replaced_filesystem(options)
    if options.context_source is None and options.dockerfile_url is None and not on_root:
        yield options
        return
    with _kiln_home(options) as home:
        context = options.context
        source = options.context_source
        dockerfile = options.dockerfile
        if source is not None:
            target = home / BUILD_CONTEXT_DIR
            _make_empty(target)
            fetch(source, target, options.git)
            context = sub_path(target, options.context_sub_path, source)
        elif on_root:
            target = home / BUILD_CONTEXT_DIR
            _make_empty(target)
            copy_context(context, target, leave_out=options.kaniko_dir)
            if dockerfile.is_relative_to(context):
                dockerfile = target / dockerfile.relative_to(context)
            context = target
        if options.dockerfile_url is not None:
            from executor.contexts.http import download

            dockerfile = download(options.dockerfile_url, home / "Dockerfile",
                                  what=f"--dockerfile {display(options.dockerfile_url)}")
        elif source is not None and not dockerfile.is_absolute():
            if (context / dockerfile).exists() or not dockerfile.exists():
                dockerfile = context / dockerfile
            if not dockerfile.is_file():
                raise OptionsError(f"--dockerfile {options.dockerfile}: no such file in the "
                                   f"context {display(source)}")
        yield dataclasses.replace(options, context=context, dockerfile=dockerfile)


def context_on_replaced_filesystem(options: BuildOptions) -> bool:
    """Whether an in-place build's local context lies where the base image is extracted.

    Sources baked into a derived executor image, or put there by a CI step, are on the
    container's own filesystem rather than a volume (a mount point, which builds leave alone);
    extracting a base over ``/`` would remove them before the first COPY.
    """
    from snapshot.ignore import IgnoreList

    if not options.in_place or options.context_source is not None:
        return False
    real = os.path.realpath(options.context)
    rel = os.path.relpath(real, os.path.realpath(options.root))
    if rel in (".", "..") or rel.startswith("../") or not os.path.isdir(real):
        return False
    ignore = IgnoreList.for_build(options.root, kiln_dir=options.kaniko_dir,
                                  extra=options.ignore_paths,
                                  ignore_var_run=options.ignore_var_run)
    return not ignore.is_ignored(rel)


def copy_context(context: Path, target: Path, *, leave_out: Path | None = None) -> None:
    """Copy the context directory to ``target``: files, modes, mtimes, xattrs and symlinks as
    they are; sockets, FIFOs and devices, which COPY cannot read, are left out, and so are
    ``target`` and ``leave_out`` (the kiln dir) should the context hold them."""
    log.info("Copying the build context %s to %s: it is on the filesystem the base image "
             "replaces", context, target)
    skip = {os.path.realpath(target), *([os.path.realpath(leave_out)] if leave_out else [])}

    def not_copied(directory: str, names: list[str]) -> set[str]:
        skipped = set()
        for name in names:
            path = os.path.join(directory, name)
            mode = os.lstat(path).st_mode
            if (not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode))
                    or (stat.S_ISDIR(mode) and os.path.realpath(path) in skip)):
                skipped.add(name)
        return skipped

    try:
        shutil.copytree(context, target, symlinks=True, ignore=not_copied,
                        dirs_exist_ok=True)
    except shutil.Error as exc:
        first = exc.args[0][0] if exc.args and exc.args[0] else exc
        raise ContextError(f"copying the build context {context}: {first}") from None
    except OSError as exc:
        raise ContextError(f"copying the build context {context} to {target}: "
                           f"{exc.strerror}") from None


@contextlib.contextmanager
def _kiln_home(options: BuildOptions) -> Iterator[Path]:
    if options.in_place or options.kaniko_dir_given:
        options.kaniko_dir.mkdir(parents=True, exist_ok=True)
        yield options.kaniko_dir
        return
    from executor.workspace import temporary_workspace

    with temporary_workspace() as temp:  # not left in /tmp by a killed build
        yield temp


def _make_empty(target: Path) -> None:
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.exists():
        log.info("Removing the previous build context in %s", target)
        shutil.rmtree(target)
    target.mkdir(parents=True, mode=0o750)
