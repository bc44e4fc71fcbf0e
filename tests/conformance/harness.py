"""The conformance corpus: cases, their contexts, and how an image built from one is observed.

A case is a directory under ``cases/``: a ``Dockerfile``, the context files, and an optional
``case.toml``. Top-level names starting with ``_`` and ``case.toml`` itself are material for the
harness, not part of the build context: ``_parent/`` (a Dockerfile built first, pushed and used
as ``@PARENT@``), ``_http/`` (files served over loopback HTTP as ``@HTTP@/NAME``), ``_secrets/``,
and ``_archives/`` (directories packed into tar files at render time).

Placeholders in every file whose name contains ``Dockerfile``: ``@REGISTRY@`` (the test
registry), ``@BASE@`` (the busybox base image), ``@HTTP@`` (this case's HTTP directory) and
``@PARENT@``. Both builders also get ``--build-arg BASE=<base image>``, so ``ARG BASE`` +
``FROM $BASE`` works as it would with ``docker build``.

``case.toml`` keys (all optional)::

    notes = "what the case checks, and what Docker (BuildKit) does"
    dockerfile = "Dockerfile"          # the Dockerfile's name in the context
    build_args = { NAME = "value" }
    target = "stage"
    skip_unused_stages = true
    secrets = { id = "_secrets/file" } # --secret id=ID,src=FILE
    chmod = { "path" = "0600" }        # modes of context files (git keeps only 644/755)
    chown = { "path" = "1234:1234" }   # owners of context files
    xattrs = { "path" = { "user.a" = "test" } }  # extended attributes of context files
    hardlinks = { "path" = "existing/path" }     # context files made hard links (git cannot)
    mkdirs = ["empty/dir"]             # empty directories git cannot hold
    archives = { "a.tar.gz" = "_archives/a", "b.tar" = "_archives/b.toml" }  # dir or listing
    mtime_paths = ["/file"]            # paths whose mtime is compared too
    layer_entries = true               # compare each new layer's tar entries too (see below)
    expect_error = "error building image: Dockerfile:N: ..."
    xfail = "why kiln cannot pass yet"
    departures = ["user-xattrs"]       # deliberate departures from Docker (README), by name

``layer_entries`` adds what unpacking hides to the description: for each layer above the base
image, every tar entry in order with its name as written (directories with their slash),
typeflag, mode, uid:gid, user and group names, whether its mtime is zero, whole seconds or has a
fraction, its PAX record keys, a hard link's first name; and the blob digest of a layer with
no entries (``tests/support/layers.py``). Opt-in: it fetches every layer again.

The fixture is BuildKit's image as it is. A case whose kiln image differs from Docker's on purpose
names the departure; ``DEPARTURES`` says how each one changes the comparison, and the README's
list of departures says why kiln departs.
"""

from __future__ import annotations

import bz2
import email.utils
import gzip
import http.server
import io
import json
import lzma
import os
import shutil
import subprocess
import tarfile
import threading
import tomllib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.buildkit import BuildKit, strip_syntax_directive
from tests.support.compare import Description, describe_image
from tests.support.kiln import run_executor
from tests.support.layers import layer_count, summarise_layers
from tests.support.runtime import unpack_image

HERE = Path(__file__).parent
CASES_DIR = HERE / "cases"
EXPECTED_DIR = HERE / "expected"

#: mtime of generated archive members, and the Last-Modified of every served file.
FIXED_MTIME = 1_700_000_000

_META_NAMES = frozenset({"case.toml"})


@dataclass(frozen=True)
class Case:
    """One conformance case as ``case.toml`` describes it."""

    name: str
    directory: Path
    notes: str = ""
    dockerfile: str = "Dockerfile"
    build_args: Mapping[str, str] = field(default_factory=dict)
    target: str | None = None
    skip_unused_stages: bool = False
    secrets: Mapping[str, str] = field(default_factory=dict)
    chmod: Mapping[str, str] = field(default_factory=dict)
    chown: Mapping[str, str] = field(default_factory=dict)
    xattrs: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    hardlinks: Mapping[str, str] = field(default_factory=dict)
    mkdirs: tuple[str, ...] = ()
    archives: Mapping[str, str] = field(default_factory=dict)
    mtime_paths: tuple[str, ...] = ()
    layer_entries: bool = False
    expect_error: str | None = None
    xfail: str | None = None
    departures: tuple[str, ...] = ()

    @property
    def has_parent(self) -> bool:
        return (self.directory / "_parent").is_dir()

    @property
    def expected_path(self) -> Path:
        return EXPECTED_DIR / f"{self.name}.json"


def load_case(directory: Path) -> Case:
    data: dict[str, Any] = {}
    toml_path = directory / "case.toml"
    if toml_path.exists():
        data = tomllib.loads(toml_path.read_text())
    known = set(Case.__dataclass_fields__) - {"name", "directory"}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"{toml_path}: unknown keys {sorted(unknown)}")
    undefined = set(data.get("departures", ())) - set(DEPARTURES)
    if undefined:
        raise ValueError(f"{toml_path}: unknown departures {sorted(undefined)}")
    for key in ("mkdirs", "mtime_paths", "departures"):
        if key in data:
            data[key] = tuple(data[key])
    return Case(name=directory.name, directory=directory, **data)


def load_cases() -> list[Case]:
    return [load_case(d) for d in sorted(CASES_DIR.iterdir()) if d.is_dir()]


# --- contexts ---------------------------------------------------------------------------------


def _substitute(text: str, subs: Mapping[str, str]) -> str:
    for key, value in subs.items():
        text = text.replace(key, value)
    return text


def _normalise_modes(root: Path) -> None:
    """644 for files, 755 for executables and directories, whatever the checkout's umask."""
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames:
            p = Path(directory) / name
            if not p.is_symlink():
                p.chmod(0o755)
        for name in filenames:
            p = Path(directory) / name
            if not p.is_symlink():
                p.chmod(0o755 if p.stat().st_mode & 0o100 else 0o644)


_ENTRY_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
                "hardlink": tarfile.LNKTYPE}


def _add_listed_entries(tar: tarfile.TarFile, listing: Path) -> None:
    """The entries ``listing`` (a TOML file of ``[[entry]]`` tables) names, in its order.

    For archives a directory cannot hold: names that climb (``../x``), an empty name, a
    symlink then a file through it. Keys: ``name``, ``type`` (file, dir, symlink, hardlink;
    default file), ``data`` (a file's text), ``target`` (a link's), ``mode`` (octal text).
    """
    for entry in tomllib.loads(listing.read_text())["entry"]:
        info = tarfile.TarInfo(entry["name"])
        info.type = _ENTRY_TYPES[entry.get("type", "file")]
        info.mtime = FIXED_MTIME
        info.mode = int(entry.get("mode", "755" if info.type == tarfile.DIRTYPE else "644"), 8)
        info.linkname = entry.get("target", "")
        data = entry.get("data", "").encode()
        info.size = len(data) if info.type == tarfile.REGTYPE else 0
        tar.addfile(info, io.BytesIO(data) if info.size else None)


def _pack(source: Path, dest: Path) -> None:
    """``source``'s contents as a tar archive, compressed as ``dest``'s suffix says.

    ``source`` is a directory, or a ``.toml`` listing of entries (:func:`_add_listed_entries`).
    """
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        if source.suffix == ".toml":
            _add_listed_entries(tar, source)
        for path in sorted(source.rglob("*") if source.is_dir() else ()):
            info = tar.gettarinfo(str(path), arcname=path.relative_to(source).as_posix())
            info.mtime = FIXED_MTIME
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o755 if path.is_dir() else 0o644
            if info.isfile():
                with path.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    data = buf.getvalue()
    name = dest.name
    if name.endswith((".tar.gz", ".tgz")):
        data = gzip.compress(data, mtime=0)
    elif name.endswith(".tar.bz2"):
        data = bz2.compress(data)
    elif name.endswith(".tar.xz"):
        data = lzma.compress(data)
    elif name.endswith(".tar.zst"):
        import zstandard

        data = zstandard.ZstdCompressor().compress(data)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)


def render_directory(source: Path, dest: Path, subs: Mapping[str, str],
                     skip_meta: bool = True) -> Path:
    """Copy ``source`` to ``dest`` without harness material, placeholders filled in."""
    def ignore(directory: str, names: list[str]) -> list[str]:
        if Path(directory) != source or not skip_meta:
            return []
        return [n for n in names if n.startswith("_") or n in _META_NAMES]

    shutil.copytree(source, dest, symlinks=True, ignore=ignore)
    _normalise_modes(dest)
    for path in dest.rglob("*"):
        if "Dockerfile" in path.name and path.is_file() and not path.is_symlink():
            # surrogateescape: a case may hold bytes that are not UTF-8 (latin1-comment)
            text = path.read_text(errors="surrogateescape")
            path.write_text(_substitute(text, subs), errors="surrogateescape")
    return dest


def render_context(case: Case, dest: Path, subs: Mapping[str, str]) -> Path:
    """The build context of ``case`` in ``dest``, ready for a builder."""
    render_directory(case.directory, dest, subs)
    for rel in case.mkdirs:
        (dest / rel).mkdir(parents=True, exist_ok=True)
    for archive, source in case.archives.items():
        _pack(case.directory / source, dest / archive)
    for rel, existing in case.hardlinks.items():
        (dest / rel).unlink(missing_ok=True)
        os.link(dest / existing, dest / rel)
    for rel, mode in case.chmod.items():
        (dest / rel).chmod(int(mode, 8))
    for rel, owner in case.chown.items():
        uid, _, gid = owner.partition(":")
        os.lchown(dest / rel, int(uid), int(gid or uid))
    for rel, attributes in case.xattrs.items():
        for name, value in attributes.items():
            os.setxattr(dest / rel, name, _xattr_value(value), follow_symlinks=False)
    return dest


def _xattr_value(text: str) -> bytes:
    """An xattr value from case.toml: ``hex:0100...`` for binary values, else the text."""
    return bytes.fromhex(text[4:]) if text.startswith("hex:") else text.encode()


def secret_args(case: Case) -> list[str]:
    return [a for sid, src in case.secrets.items()
            for a in ("--secret", f"id={sid},src={case.directory / src}")]


# --- observing an image -----------------------------------------------------------------------


def observe(ref: str, workdir: Path, *, base: Description | None, registry_host: str,
            mtime_paths: tuple[str, ...] = ()) -> Description:
    """Pull ``ref``, unpack it with umoci, and describe it (files as a delta against ``base``)."""
    rootfs = unpack_image(ref, workdir)
    config = raw_config(ref)
    layers = len(config.get("rootfs", {}).get("diff_ids", []))
    try:
        return describe_image(rootfs, config.get("config") or {}, layers, base=base,
                              mtime_paths=mtime_paths, replace={registry_host: "@REGISTRY@"})
    finally:
        shutil.rmtree(rootfs.parent.parent, ignore_errors=True)


def raw_config(ref: str) -> dict[str, Any]:
    """The image config blob of ``ref`` as stored.

    ``skopeo inspect --config`` without ``--raw`` converts a Docker config to the OCI struct,
    which has no Healthcheck, Shell or OnBuild: they would vanish from both sides unseen.
    """
    proc = subprocess.run(["skopeo", "inspect", "--config", "--raw", "--tls-verify=false",
                           f"docker://{ref}"], capture_output=True, text=True, check=False,
                          timeout=120, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"skopeo inspect --config --raw {ref} failed: {proc.stderr}")
    config: dict[str, Any] = json.loads(proc.stdout)
    return config


def _without_user_xattrs(description: Description) -> Description:
    """Only ``security.capability``: Docker's layer writer drops every other xattr."""
    out: Description = json.loads(json.dumps(description))
    for info in out["files"].values():
        xattrs = {k: v for k, v in (info.get("xattrs") or {}).items()
                  if k == "security.capability"}
        if xattrs:
            info["xattrs"] = xattrs
        else:
            info.pop("xattrs", None)  # a file left with none has no key, as in a fixture
    return out


#: Deliberate departures from Docker, by the name a case gives in ``departures``; the README's
#: list of departures says why kiln departs. Each maps kiln's description to what Docker's
#: would be, or is None where kiln refuses a Dockerfile that BuildKit builds.
DEPARTURES: dict[str, Callable[[Description], Description] | None] = {
    "user-xattrs": _without_user_xattrs,
    "unknown-chown-refused": None,
    "several-sources-to-file-refused": None,
    "duplicate-stage-refused": None,
    "ssh-without-agent-refused": None,
    "link-through-symlink-refused": None,
}


def as_docker_would(description: Description, departures: tuple[str, ...]) -> Description:
    """kiln's description with the case's deliberate departures undone."""
    for name in departures:
        undo = DEPARTURES[name]
        if undo is not None:
            description = undo(description)
    return description


# --- a file server for ADD <url> --------------------------------------------------------------


class _CaseFiles(http.server.BaseHTTPRequestHandler):
    """Serves ``cases/NAME/_http/PATH`` as ``/NAME/PATH`` with a fixed Last-Modified."""

    def do_GET(self) -> None:
        name, _, rest = self.path.lstrip("/").partition("/")
        path = CASES_DIR / name / "_http" / rest.split("?", 1)[0]
        if not rest or ".." in rest.split("/") or not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Last-Modified", email.utils.formatdate(FIXED_MTIME, usegmt=True))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serve_case_files() -> Iterator[str]:
    """An HTTP server on loopback for every case's ``_http``; yields ``http://127.0.0.1:PORT``."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CaseFiles)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def placeholders(case: Case, registry_host: str, base: str, http_url: str,
                 parent: str | None = None) -> dict[str, str]:
    subs = {"@REGISTRY@": registry_host, "@BASE@": base, "@HTTP@": f"{http_url}/{case.name}"}
    if parent is not None:
        subs["@PARENT@"] = parent
    return subs


# --- building a case --------------------------------------------------------------------------


@dataclass(frozen=True)
class Environment:
    """What every case builds against: the registry, the base image, the HTTP server."""

    registry_host: str
    base: str
    http_url: str
    base_description: Description


@dataclass(frozen=True)
class Outcome:
    """A case built by one builder: exit code, output, last line, and the image described."""

    exit_code: int
    output: str
    error_line: str
    description: Description | None = None


#: build(context, dockerfile, dest, work, case, env) -> (exit code, output, last line)
Builder = Callable[[Path, str, str, Path, Case, Environment], tuple[int, str, str]]


def kiln_builder(context: Path, dockerfile: str, dest: str, work: Path, case: Case,
                 env: Environment) -> tuple[int, str, str]:
    """Build with kiln's CLI in sandbox mode and push to ``dest``."""
    args = ["--dockerfile", str(context / dockerfile), "--destination", dest, "--insecure",
            "--insecure-pull", "--build-arg", f"BASE={env.base}"]
    for key, value in case.build_args.items():
        args += ["--build-arg", f"{key}={value}"]
    if case.target:
        args += ["--target", case.target]
    if case.skip_unused_stages:
        args.append("--skip-unused-stages")
    args += secret_args(case)
    result = run_executor(context, work / "root", *args, timeout=180)
    shutil.rmtree(work / "root", ignore_errors=True)
    return result.exit_code, result.stderr, result.last_line


def buildkit_builder(buildkit: BuildKit) -> Builder:
    """Build with BuildKit, Docker's builder, and push to ``dest``: the reference."""
    def build(context: Path, dockerfile: str, dest: str, work: Path, case: Case,
              env: Environment) -> tuple[int, str, str]:
        strip_syntax_directive(context / dockerfile)
        result = buildkit.build_push(
            context, context / dockerfile, dest, build_args={"BASE": env.base, **case.build_args},
            target=case.target,
            secrets={sid: case.directory / src for sid, src in case.secrets.items()})
        return result.exit_code, result.output, result.error_line
    return build


def run_case(case: Case, env: Environment, work: Path, builder: Builder, tag: str) -> Outcome:
    """Build ``case`` (its ``_parent`` first, if any) with ``builder`` and describe the image."""
    work.mkdir(parents=True, exist_ok=True)
    parent: str | None = None
    if case.has_parent:
        parent = f"{env.registry_host}/conformance/{case.name}-parent:{tag}"
        subs = placeholders(case, env.registry_host, env.base, env.http_url)
        context = render_directory(case.directory / "_parent", work / "parent-context", subs)
        code, output, last = builder(context, "Dockerfile", parent, work / "parent", case, env)
        if code != 0:
            return Outcome(code, output, f"building _parent failed: {last}")
    subs = placeholders(case, env.registry_host, env.base, env.http_url, parent)
    context = render_context(case, work / "context", subs)
    dest = f"{env.registry_host}/conformance/{case.name}:{tag}"
    code, output, last = builder(context, case.dockerfile, dest, work, case, env)
    if code != 0:
        # Addresses that change between runs become the placeholders the case file uses.
        back = {subs[k]: k for k in ("@HTTP@", "@PARENT@", "@BASE@", "@REGISTRY@") if k in subs}
        return Outcome(code, output, _substitute(last, back))
    description = observe(dest, work / "observe", base=env.base_description,
                          registry_host=env.registry_host, mtime_paths=case.mtime_paths)
    if case.layer_entries:
        description["layer_entries"] = summarise_layers(dest, layer_count(env.base))
    return Outcome(code, output, last, description)


def describe_base(base: str, registry_host: str, work: Path) -> Description:
    """The full description of the base image, the reference point of every delta."""
    return observe(base, work, base=None, registry_host=registry_host)
