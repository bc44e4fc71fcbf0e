"""ADD: COPY plus URLs, local archive extraction and ``--checksum``, as BuildKit does them.

- A local (or ``--from``) regular file that is a tar archive, plain or compressed with gzip,
  bzip2, xz or zstd, is extracted into the destination directory (see ``archive.py``);
  ``--unpack=false`` copies it instead.
- An ``http(s)://`` source is downloaded, streamed to a file under kiln's scratch directory. Its
  name is the last element of the URL path (``__unnamed__`` if there is none), its mode 0600
  unless ``--chmod``, its owner root unless ``--chown``, and its mtime the ``Last-Modified``
  header when the server sends one. It is not extracted unless ``--unpack=true``.
- ``--checksum=sha256:<hex>`` verifies a downloaded file and is refused for other sources,
  as BuildKit refuses it.
- A git source (``https://host/repo.git#ref``, ``git@host:repo``) stops the build with an error:
  kiln does not clone repositories in ADD yet.
"""

from __future__ import annotations

import email.utils
import hashlib
import os
import posixpath
import re
import tempfile
import urllib.parse
from pathlib import Path

import requests

from executor.dockerfile.parse import Instruction
from executor.instructions import archive
from executor.instructions.copy import (
    COPY_FLAGS,
    Source,
    collect_sources,
    history_line,
    place_sources,
    read_request,
    written_paths,
)
from executor.instructions.metadata import Step
from executor.instructions.state import StageState

ADD_FLAGS = (*COPY_FLAGS, "checksum", "keep-git-dir", "unpack")
_CHUNK = 1 << 20
_TIMEOUT = 60


def apply_add(state: StageState, inst: Instruction) -> Step:
    request = read_request(state, inst, ADD_FLAGS)
    flags = request.flags
    unpack_flag = flags.get("unpack")
    if unpack_flag is not None and unpack_flag.lower() not in ("true", "false"):
        raise inst.error(f"invalid value {unpack_flag!r} for --unpack: expected true or false")
    checksum = state.expand(inst, flags["checksum"]) if "checksum" in flags else None
    if checksum is not None:
        _check_digest_format(inst, checksum)
    if "keep-git-dir" in flags:
        raise inst.error("ADD --keep-git-dir: kiln does not support git sources in ADD yet")
    urls = [s for s in request.sources if is_url(s)]
    for source in request.sources:
        if is_git(source):
            raise inst.error(f"ADD {source}: kiln does not support git sources in ADD yet; "
                             "clone the repository in a RUN step or into the build context")
    if checksum is not None and (len(urls) != len(request.sources) or len(urls) != 1):
        raise inst.error("checksum can't be specified for non-HTTP(S) sources")
    with tempfile.TemporaryDirectory(prefix="kiln-add-", dir=state.scratch_dir) as scratch:
        found: list[Source] = []
        for index, source in enumerate(request.sources):
            if is_url(source):
                unpack = unpack_flag is not None and unpack_flag.lower() == "true"
                host = download(inst, source, Path(scratch) / str(index), checksum)
                state.fetched.append((source, _sha256_file(host)))
                found.append(Source(host, host.name, keep_rel=host.name,
                                    unpack=unpack and archive.is_archive(host)))
                continue
            local = collect_sources(state, inst, request, source, Path(scratch))
            unpack = unpack_flag is None or unpack_flag.lower() == "true"
            found.extend(_mark_archives(local) if unpack and not source.startswith("<<")
                         else local)
        written = place_sources(state, inst, request, found)
    return Step(history_line(inst), touches_fs=True, written=written_paths(state, written))


def _mark_archives(sources: list[Source]) -> list[Source]:
    out = []
    for source in sources:
        if source.host.is_file() and archive.is_archive(source.host):
            source = Source(source.host, source.rel, source.context_rel, source.keep_rel,
                            unpack=True)
        out.append(source)
    return out


def is_url(source: str) -> bool:
    lowered = source.lower()
    return lowered.startswith(("http://", "https://")) and not is_git(source)


def is_git(source: str) -> bool:
    """A git source as BuildKit recognises it: ``git@``, ``git://``, or a URL ending in
    ``.git`` (before a ``#ref``)."""
    lowered = source.lower()
    if lowered.startswith(("git@", "git://", "ssh://")):
        return True
    if lowered.startswith(("http://", "https://")):
        path = urllib.parse.urlsplit(source).path
        return path.endswith(".git")
    return False


_DIGEST = re.compile(r"^sha(256|384|512):([0-9a-f]+)$")
_HEX_LENGTH = {"256": 64, "384": 96, "512": 128}


def _check_digest_format(inst: Instruction, checksum: str) -> None:
    match = _DIGEST.match(checksum)
    if not match or len(match.group(2)) != _HEX_LENGTH[match.group(1)]:
        raise inst.error(f"invalid checksum digest format: {checksum}")


def url_file_name(url: str) -> str:
    """The name BuildKit gives a downloaded file: the URL path's last element."""
    base = posixpath.basename(urllib.parse.urlsplit(url).path)
    return base if base not in ("", ".", "/", "..") else "__unnamed__"


def download(inst: Instruction, url: str, directory: Path, checksum: str | None) -> Path:
    """Stream ``url`` to ``directory/<name>``: mode 0600, mtime from Last-Modified."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / url_file_name(url)
    algorithm = checksum.split(":", 1)[0] if checksum else "sha256"
    digest = hashlib.new(algorithm)
    try:
        with requests.get(url, stream=True, timeout=_TIMEOUT) as response:
            if response.status_code >= 400:
                raise inst.error(f"ADD {url}: invalid response status {response.status_code}")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                for chunk in response.iter_content(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
            modified = response.headers.get("Last-Modified")
    except requests.RequestException as exc:
        raise inst.error(f"ADD {url}: download failed: {_reason(exc)}") from None
    os.chmod(path, 0o600)
    if checksum is not None:
        got = f"{algorithm}:{digest.hexdigest()}"
        if got != checksum:
            raise inst.error(f"ADD --checksum: digest mismatch for {url}: expected {checksum}, "
                             f"got {got}")
    if modified:
        parsed = _http_date(modified)
        if parsed is not None:
            os.utime(path, (parsed, parsed))
    return path


def _sha256_file(path: Path) -> str:
    """The downloaded file's sha256 (hex), for ``--attest type=provenance``."""
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _http_date(text: str) -> float | None:
    try:
        return email.utils.parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError):
        return None


def _reason(exc: requests.RequestException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text
