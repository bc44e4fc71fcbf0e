"""BuildOptions: every flag of a build, validated once, so the build never re-checks a flag.

Names follow kaniko's flags (``--no-push`` is ``no_push``) so a kaniko user's mental model maps
one to one. Validation here produces the one-line errors a user sees for a bad flag.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from executor.attest import AttestRequest
from executor.errors import ImageError, OptionsError
from executor.image.reference import ImageRef

DEFAULT_KANIKO_DIR = Path("/kaniko")
#: kaniko's default ``--cache-dir``: where its documentation mounts the warmed volume.
DEFAULT_CACHE_DIR = Path("/cache")


@dataclass(frozen=True)
class BuildOptions:
    """One build's settings; see ``executor --help`` for each flag's meaning."""

    context: Path
    dockerfile: Path
    destinations: tuple[str, ...] = ()
    no_push: bool = False
    tar_path: Path | None = None
    oci_layout_path: Path | None = None
    digest_file: Path | None = None
    image_name_with_digest_file: Path | None = None
    image_name_tag_with_digest_file: Path | None = None
    build_args: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    image_format: str | None = None
    target: str | None = None
    insecure: bool = False
    insecure_pull: bool = False
    insecure_registries: tuple[str, ...] = ()
    skip_tls_verify: bool = False
    skip_tls_verify_pull: bool = False
    skip_tls_verify_registries: tuple[str, ...] = ()
    #: ``--registry-certificate REG=ca.pem``: extra CA bundle trusted for that registry.
    registry_certificates: dict[str, Path] = field(default_factory=dict)
    #: ``--registry-client-cert REG=cert.pem,key.pem``: client certificate for that registry.
    registry_client_certs: dict[str, tuple[Path, Path]] = field(default_factory=dict)
    skip_push_permission_check: bool = False
    #: ``--registry-mirror``: mirrors of Docker Hub, tried in order.
    registry_mirrors: tuple[str, ...] = ()
    #: ``--registry-map a=b;a=c``: (registry, its mirrors), in the order given.
    registry_maps: tuple[tuple[str, tuple[str, ...]], ...] = ()
    skip_default_registry_fallback: bool = False
    image_download_retry: int = 0
    image_fs_extract_retry: int = 0
    push_retry: int = 0
    push_ignore_immutable_tag_errors: bool = False
    custom_platform: str | None = None
    force: bool = False
    kaniko_dir: Path = DEFAULT_KANIKO_DIR
    kaniko_dir_given: bool = False
    root: Path = Path("/")
    compression: str = "gzip"
    compression_level: int = -1
    ignore_paths: tuple[str, ...] = ()
    ignore_var_run: bool = True
    skip_unused_stages: bool = False
    single_snapshot: bool = False
    # kaniko's full|redo|time trade exactness for speed; kiln's one snapshot is exact and fast,
    # so the mode is kept only to show in logs.
    snapshot_mode: str = "full"
    cleanup: bool = False
    #: ``--secret id=NAME,src=PATH|env=VAR``: (id, "file" or "env", path or variable name).
    secrets: tuple[tuple[str, str, str], ...] = ()
    #: ``--attest``: provenance and SBOM statements attached to the image (executor/attest).
    attest: tuple[AttestRequest, ...] = ()
    #: ``--reproducible``: timestamps of config, history and new layer entries at the epoch.
    reproducible: bool = False
    #: ``--context`` when it names something to fetch (``tar://``, ``git://``, ``https://``,
    #: ``s3://``, ``gs://``); ``executor.contexts`` fetches it and sets ``context``.
    context_source: str | None = None
    #: ``--context-sub-path``: the directory inside the fetched context to build from.
    context_sub_path: str = ""
    #: ``--git``: how a git context is cloned.
    git: GitOptions = field(default_factory=lambda: GitOptions())
    #: ``--dockerfile`` when it is an ``http(s)://`` URL: downloaded before the build.
    dockerfile_url: str | None = None
    #: ``--cache``: reuse RUN layers from the cache repository (executor/cache.py).
    cache: bool = False
    #: ``--cache-repo``; empty: ``<first destination's repository>/cache``, as kaniko infers.
    cache_repo: str = ""
    #: ``--cache-ttl``: cached layers older than this are not used (kaniko: two weeks).
    cache_ttl_s: float = 336 * 3600
    cache_run_layers: bool = True
    no_push_cache: bool = False
    #: ``--cache-dir``: base images warmed onto a volume (executor/basecache.py).
    cache_dir: Path = DEFAULT_CACHE_DIR
    #: ``--dryrun``: resolve and print the plan (executor/dryrun.py), build nothing.
    dryrun: bool = False
    #: ``--pre-cleanup`` (env ``KANIKO_PRE_CLEANUP``): clear the filesystem before building.
    pre_cleanup: bool = False
    #: ``--credential-helpers``: the built-in credential sources to use (None: all of them;
    #: empty: none). See executor/registry/credentials.py.
    credential_helpers: tuple[str, ...] | None = None
    #: ``--report FILE``: the build report as JSON (executor/report.py).
    report_path: Path | None = None

    @property
    def cache_repository(self) -> str:
        """Where cached layers live: ``--cache-repo``, or beside the first destination."""
        if self.cache_repo:
            return self.cache_repo
        return f"{ImageRef.parse(self.destinations[0]).name}/cache"

    @property
    def cache_layout(self) -> Path | None:
        """``--cache-repo oci:DIR`` (with ``--cache``): the directory, made absolute."""
        if not self.cache or not self.cache_repository.startswith("oci:"):
            return None
        return Path(self.cache_repository.removeprefix("oci:")).absolute()

    @property
    def in_place(self) -> bool:
        """True when building over this process's own ``/`` (kaniko's only mode)."""
        return self.root.resolve() == Path("/")

    def validate(self) -> BuildOptions:
        """Check flag combinations; returns self so construction reads as one expression."""
        if not self.destinations and not self.no_push:
            raise OptionsError("you must provide --destination, or use --no-push")
        _check_destinations(self.destinations)
        if self.compression not in ("gzip", "zstd"):
            raise OptionsError(f"--compression must be gzip or zstd, not {self.compression!r}")
        limits = {"gzip": (-1, 9), "zstd": (-1, 22)}[self.compression]
        if not limits[0] <= self.compression_level <= limits[1]:
            raise OptionsError(f"--compression-level {self.compression_level} is out of range "
                               f"for {self.compression} ({limits[0]}..{limits[1]})")
        if self.image_format == "docker" and self.compression == "zstd":
            raise OptionsError("--image-format docker cannot describe zstd or uncompressed "
                               "layers; use --image-format oci (or --compression gzip)")
        if self.image_format == "docker" and self.annotations:
            raise OptionsError("--image-format docker cannot describe manifest annotations; "
                               "use --image-format oci")
        if self.context_source is None and not self.context.is_dir():
            raise OptionsError(f"--context {self.context}: no such directory")
        if self.context_source is None and self.dockerfile_url is None:
            problem = not_a_file(f"--dockerfile {self.dockerfile}", self.dockerfile)
            if problem:
                raise OptionsError(problem)
        for flag, count in (("--push-retry", self.push_retry),
                            ("--image-download-retry", self.image_download_retry),
                            ("--image-fs-extract-retry", self.image_fs_extract_retry)):
            if count < 0:
                raise OptionsError(f"{flag} {count}: must not be negative")
        if self.skip_default_registry_fallback and not (self.registry_mirrors
                                                        or self.registry_maps):
            raise OptionsError("--skip-default-registry-fallback needs --registry-mirror or "
                               "--registry-map")
        for registry, ca in self.registry_certificates.items():
            problem = not_a_file(f"--registry-certificate {registry}={ca}", ca)
            if problem:
                raise OptionsError(problem)
        for registry, (cert, key) in self.registry_client_certs.items():
            for path in (cert, key):
                problem = not_a_file(f"--registry-client-cert {registry}={cert},{key}: {path}",
                                     path)
                if problem:
                    raise OptionsError(problem)
        if self.cache and not self.cache_repo and not self.destinations:
            raise OptionsError("--cache needs --cache-repo, or a --destination to keep the "
                               "cache beside")
        if self.cache_layout is not None:
            if self.cache_repository == "oci:":
                raise OptionsError("--cache-repo oci:DIR: name the directory")
        elif self.cache:
            try:
                ImageRef.parse(self.cache_repository)
            except ImageError as exc:
                raise OptionsError(f"--cache-repo: {exc}") from None
        if not self.in_place:
            _check_sandbox_root(self.root, self.kaniko_dir if self.kaniko_dir_given else None)
        return self


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def file_kind(path: Path) -> str | None:
    """What ``path`` is when it is not a regular file (``a directory``, ``a FIFO``, ``a
    character device``, ``missing``); None for a regular file (after symlinks)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def not_a_file(label: str, path: Path) -> str | None:
    """``LABEL: why`` when ``path`` is not a file to read (a FIFO would block the build,
    ``/dev/zero`` never ends, a directory is a mistake); None when it is one."""
    kind = file_kind(path)
    if kind is None:
        return None
    if kind == "missing":
        return f"{label}: no such file"
    return f"{label}: is {kind}, not a file" if kind.startswith("a ") else f"{label}: {kind}"


def _check_destinations(destinations: tuple[str, ...]) -> None:
    """Each ``--destination`` must be a reference a push can write, checked before the build
    rather than after it: a digest names content that does not exist until the build ends."""
    for destination in destinations:
        try:
            ref = ImageRef.parse(destination)
        except ImageError as exc:
            raise OptionsError(f"--destination {destination}: {exc}") from None
        if ref.digest:
            raise OptionsError(f"--destination {destination}: a digest cannot be pushed to (the "
                               "image's digest is known only once it is built); give a tag, "
                               f"such as {ref.name}:{ref.tag or 'latest'}")


def _check_sandbox_root(root: Path, kaniko_dir: Path | None) -> None:
    """A sandbox root must be a directory kiln may fill and wipe: absent or empty.

    Refusing a non-empty directory is what keeps a mistyped ``--root $HOME`` from being wiped
    between stages.
    """
    if root.exists():
        if not root.is_dir():
            raise OptionsError(f"--root {root}: not a directory")
        if any(os.scandir(root)):
            raise OptionsError(f"--root {root}: directory is not empty; kiln builds only in "
                               "an empty or new directory")
    if kaniko_dir is not None and kaniko_dir.resolve().is_relative_to(root.resolve()):
        raise OptionsError(f"--kaniko-dir {kaniko_dir} lies inside --root {root}")


def parse_secrets(values: tuple[str, ...]) -> tuple[tuple[str, str, str], ...]:
    """``--secret id=NAME,src=PATH`` / ``id=NAME,env=VAR`` (docker buildx's syntax; ``type=``
    may say file or env, and a bare ``id=NAME`` reads ``$NAME``)."""
    out: list[tuple[str, str, str]] = []
    for value in values:
        fields: dict[str, str] = {}
        for pair in value.split(","):
            key, eq, val = pair.strip().partition("=")
            key = {"source": "src"}.get(key.lower(), key.lower())
            if not eq or key not in ("id", "src", "env", "type"):
                raise OptionsError(f"--secret {value!r}: expected id=NAME,src=PATH or "
                                   "id=NAME,env=VAR")
            fields[key] = val
        secret_id = fields.get("id") or os.path.basename(fields.get("src", ""))
        kind = fields.get("type") or ("file" if "src" in fields else "env")
        if not secret_id or kind not in ("file", "env"):
            raise OptionsError(f"--secret {value!r}: expected id=NAME,src=PATH or "
                               "id=NAME,env=VAR")
        where = fields.get("src") if kind == "file" else fields.get("env") or fields.get(
            "src") or secret_id
        if not where:
            raise OptionsError(f"--secret {value!r}: a file secret needs src=PATH")
        out.append((secret_id, kind, where))
    return tuple(out)


def read_secrets(secrets: tuple[tuple[str, str, str], ...]) -> dict[str, bytes]:
    """The secret values by id; a missing file or variable is an OptionsError."""
    values: dict[str, bytes] = {}
    for secret_id, kind, where in secrets:
        if kind == "file":
            problem = file_kind(Path(where))
            # A FIFO is allowed: ``src=<(command)`` is one. A device or a directory is not:
            # /dev/zero would be read until memory runs out.
            if problem is not None and problem != "a FIFO":
                raise OptionsError(f"--secret id={secret_id}: cannot read {where}: "
                                   + ("no such file" if problem == "missing" else
                                      f"it is {problem}, not a file"))
            try:
                values[secret_id] = Path(where).read_bytes()
            except OSError as exc:
                raise OptionsError(f"--secret id={secret_id}: cannot read {where}: "
                                   f"{exc.strerror or exc}") from None
        else:
            env = os.environ.get(where)
            if env is None:
                raise OptionsError(f"--secret id={secret_id}: environment variable {where} "
                                   "is not set")
            values[secret_id] = env.encode()
    return values


def parse_registry_maps(values: tuple[str, ...]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """kaniko's ``--registry-map orig=mirror;orig2=mirror2`` (repeatable) in order."""
    out: list[tuple[str, tuple[str, ...]]] = []
    for value in values:
        for pair in filter(None, value.split(";")):
            registry, eq, mirror = pair.partition("=")
            if not eq or not registry or not mirror:
                raise OptionsError(f"--registry-map {value!r}: expected "
                                   "REGISTRY=MIRROR[;REGISTRY=MIRROR...]")
            out.append((registry, (mirror,)))
    return tuple(out)


def parse_client_certs(pairs: tuple[str, ...]) -> dict[str, tuple[Path, Path]]:
    """``--registry-client-cert REG=cert.pem,key.pem`` flags as registry -> (cert, key)."""
    out: dict[str, tuple[Path, Path]] = {}
    for registry, value in parse_key_values(pairs, "--registry-client-cert").items():
        cert, comma, key = value.partition(",")
        if not comma or not cert or not key or "," in key:
            raise OptionsError(f"--registry-client-cert {registry}={value}: expected "
                               "REGISTRY=CERT_FILE,KEY_FILE")
        out[registry] = (Path(cert), Path(key))
    return out


def parse_key_values(pairs: tuple[str, ...], flag: str, *,
                     bare_from_env: bool = False) -> dict[str, str]:
    """``K=V`` flags as a dict; a bare ``K`` takes ``$K`` where kaniko allows it (build args)."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not key:
            raise OptionsError(f"{flag} {pair!r}: expected KEY=VALUE")
        if not eq:
            if not bare_from_env:
                raise OptionsError(f"{flag} {pair!r}: expected KEY=VALUE")
            env = os.environ.get(key)
            if env is None:
                continue  # kaniko: a bare build arg without an env value stays unset
            value = env
        out[key] = value
    return out


@dataclass(frozen=True)
class GitOptions:
    """``--git key=value``: kaniko's options for cloning a git context."""

    branch: str = ""
    single_branch: bool = False
    recurse_submodules: bool = False
    insecure_skip_tls: bool = False
    #: Newer kaniko's ``depth``; 0 clones the whole history.
    depth: int = 0


_GIT_KEYS = {"branch": "branch", "single-branch": "single_branch",
             "recurse-submodules": "recurse_submodules", "insecure-skip-tls": "insecure_skip_tls",
             "depth": "depth"}
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def parse_git_options(values: tuple[str, ...]) -> GitOptions:
    """``--git branch=main --git single-branch=true`` (or comma-separated in one flag)."""
    found: dict[str, object] = {}
    for value in values:
        pairs = value.split(",")
        if not all(p.partition("=")[0] in _GIT_KEYS for p in pairs):
            pairs = [value]  # a branch name with a comma in it, as kaniko reads one flag
        for pair in pairs:
            key, eq, text = pair.partition("=")
            if not eq:
                raise OptionsError(f"--git {value}: invalid git flag, must be in the "
                                   "key=value format")
            if key not in _GIT_KEYS:
                raise OptionsError(f"--git {value}: unknown key {key!r} (expected one of "
                                   f"{', '.join(_GIT_KEYS)})")
            field_name = _GIT_KEYS[key]
            if field_name == "branch":
                found[field_name] = text
            elif field_name == "depth":
                if not text.isdigit():
                    raise OptionsError(f"--git {pair}: depth must be a whole number")
                found[field_name] = int(text)
            elif text in _TRUE or text in _FALSE:
                found[field_name] = text in _TRUE
            else:
                raise OptionsError(f"--git {pair}: {text!r} is not true or false")
    return GitOptions(**found)  # type: ignore[arg-type]
