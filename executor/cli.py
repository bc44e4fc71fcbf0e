"""The ``executor`` command: kaniko's flags, names and defaults, mapped onto BuildOptions.

A kaniko user swaps the image and keeps the flags, so every flag here has kaniko's name, default
and meaning. The command only maps flags; the build lives in ``executor.build``. Heavy modules
are imported inside the command so ``executor version`` and ``--help`` start quickly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from executor import __version__
from executor.flags import BOOL as _BOOL
from executor.flags import log_flags, pull_flags

if TYPE_CHECKING:
    from executor.options import BuildOptions

log = logging.getLogger("kiln")


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--context", default=None,
              help="Path to the build context directory.  [default: /workspace/]")
@click.option("--context-sub-path", default="",
              help="Sub path within the given context.")
@click.option("--git", "git_options", multiple=True,
              help="How to clone a git context: branch=NAME, single-branch=BOOL, "
              "recurse-submodules=BOOL, insecure-skip-tls=BOOL; repeatable.")
@click.option("-f", "--dockerfile", default="Dockerfile", show_default=True,
              help="Path to the Dockerfile (relative paths are looked up in the context).")
@click.option("-d", "--destination", "destinations", multiple=True,
              help="Registry and tag to push to; repeat for several.")
@click.option("--no-push", **_BOOL, help="Build the image without pushing it.")
@click.option("--tar-path", type=click.Path(path_type=Path),
              help="Also save the image as a docker-save tarball at this path.")
@click.option("--oci-layout-path", type=click.Path(path_type=Path),
              help="Also save the image as an OCI image layout at this path.")
@click.option("--digest-file", type=click.Path(path_type=Path),
              help="Write the image's digest to this file.")
@click.option("--image-name-with-digest-file", type=click.Path(path_type=Path),
              help="Write each destination as name@digest to this file.")
@click.option("--image-name-tag-with-digest-file", type=click.Path(path_type=Path),
              help="Write each destination as name:tag@digest to this file.")
@click.option("--build-arg", "build_args", multiple=True,
              help="ARG value as KEY=VALUE; a bare KEY takes the value of $KEY.")
@click.option("--image-format", type=click.Choice(["docker", "oci"]),
              help="Manifest and media types of the image  [default: as the base image; OCI "
                   "where only OCI can describe it]")
@click.option("--annotation", "annotations", multiple=True,
              help="Set a manifest annotation: KEY=VALUE; repeatable (makes the image OCI).")
@click.option("--label", "labels", multiple=True, help="Set a label on the image: KEY=VALUE.")
@click.option("--target", help="Build this stage, not the last one.")
@pull_flags
@click.option("--skip-push-permission-check", **_BOOL,
              help="Do not check before building that the destinations can be pushed to.")
@click.option("--image-fs-extract-retry", type=int, default=0, show_default=True,
              help="Number of retries for extracting the base image's filesystem.")
@click.option("--push-retry", type=int, default=0, show_default=True,
              help="Number of retries for the push operation.")
@click.option("--push-ignore-immutable-tag-errors", **_BOOL,
              help="Do not fail when a registry refuses to overwrite an immutable tag.")
@click.option("--custom-platform", help="Platform of the image to build, as os/arch[/variant].")
@log_flags
@click.option("--force", **_BOOL,
              help="Build in place even outside a container (overwrites this machine's /).")
@click.option("--kaniko-dir", envvar="KANIKO_DIR", type=click.Path(path_type=Path),
              help="Directory for kiln's own state.  [default: /kaniko]")
@click.option("--root", type=click.Path(path_type=Path), default=Path("/"), show_default=True,
              help="(kiln) Filesystem to build in; any directory but / is a sandbox build.")
@click.option("--compression", type=click.Choice(["gzip", "zstd"]), default="gzip",
              show_default=True, help="Compression of the new layers.")
@click.option("--compression-level", type=int, default=-1, show_default=True,
              help="Compression level; -1 for the algorithm's default.")
@click.option("--ignore-path", "ignore_paths", multiple=True,
              help="Path to leave out of snapshots; repeatable, globs allowed.")
@click.option("--ignore-var-run", **{**_BOOL, "default": True}, show_default=True,
              help="Leave /var/run out of snapshots.")
@click.option("--snapshot-mode", type=click.Choice(["full", "redo", "time"]), default="full",
              show_default=True,
              help="Accepted for kaniko compatibility: every mode is kiln's exact stat+ctime "
                   "snapshot.")
@click.option("--use-new-run", **_BOOL,
              help="Accepted for kaniko compatibility: kiln's RUN snapshot is always exact.")
@click.option("--single-snapshot", **_BOOL,
              help="Take one snapshot at the end of each stage: one layer over the base.")
@click.option("--skip-unused-stages", **_BOOL,
              help="Build only the stages the target depends on.")
@click.option("--cleanup", **{**_BOOL, "default": lambda: env_bool("KANIKO_CLEANUP")},
              help="Remove the built filesystem at the end (env KANIKO_CLEANUP).")
@click.option("--pre-cleanup", **{**_BOOL, "default": lambda: env_bool("KANIKO_PRE_CLEANUP")},
              help="Remove the filesystem before the build (env KANIKO_PRE_CLEANUP).")
@click.option("--dryrun", **_BOOL,
              help="Resolve the stages, base images and destinations, print the plan, and "
              "build nothing.")
@click.option("--credential-helpers", "credential_helpers", multiple=True,
              help="Built-in credential sources to use: env, google, ecr, acr, gitlab; "
              "repeatable; all by default; an empty value turns them off.")
@click.option("--report", "report_path", type=click.Path(path_type=Path),
              help="(kiln) Write the build report (steps, phases, memory) as JSON here.")
@click.option("--force-build-metadata", "force_build_metadata", hidden=True, **_BOOL,
              help="Deprecated in kaniko: its behaviour is the default.")
@click.option("--whitelist-var-run", "whitelist_var_run", hidden=True,
              **{**_BOOL, "default": None}, help="Deprecated: use --ignore-var-run.")
@click.option("--secret", "secrets", multiple=True,
              help="(kiln) Build secret for RUN --mount=type=secret, as id=NAME,src=PATH or "
              "id=NAME,env=VAR; repeatable.")
@click.option("--attest", "attest", multiple=True,
              help="(kiln) Attach an attestation as BuildKit does: type=provenance[,mode=min|max]"
              " or type=sbom, optionally ,dest=DIR for plain files; repeatable.")
@click.option("--cache", **_BOOL,
              help="Reuse RUN layers stored in the cache repository, and store new ones.")
@click.option("--cache-repo", default="",
              help="Repository for cached layers  [default: <destination>/cache]")
@click.option("--cache-ttl", default="336h0m0s", show_default=True,
              help="Cached layers older than this (a Go duration) are not used.")
@click.option("--cache-run-layers", **{**_BOOL, "default": True}, show_default=True,
              help="Cache RUN layers (with --cache).")
@click.option("--cache-copy-layers", **_BOOL,
              help="Accepted for kaniko command lines: kiln always runs COPY and ADD (reading "
              "the files costs what fetching their layer would) and keys the RUNs after them "
              "by what they copied.")
@click.option("--no-push-cache", **_BOOL, help="Use the cache, but store no new layers in it.")
@click.option("--cache-dir", default="/cache", show_default=True, type=click.Path(path_type=Path),
              help="Base images warmed onto a volume (kaniko's warmer layout); used when there.")
@click.option("--compressed-caching", **{**_BOOL, "default": True}, show_default=True,
              help="Accepted for kaniko command lines: kiln never holds a layer in memory, "
              "so either value keeps memory low.")
@click.option("--materialize", **_BOOL,
              help="Accepted for kaniko command lines: kiln always extracts the layers it takes "
              "from the cache, so the filesystem is always the build's.")
@click.option("--preserve-context", **_BOOL,
              help="Accepted for kaniko command lines: an in-place build always keeps its "
              "context (copied first when it lies on the filesystem the base replaces).")
@click.option("-b", "--bucket", hidden=True,
              help="kaniko's older way to name a context in a bucket: NAME (gs://NAME) or URL.")
@click.option("--snapshotMode", "snapshot_mode_deprecated", hidden=True,
              type=click.Choice(["full", "redo", "time"]),
              help="Deprecated: use --snapshot-mode.")
@click.option("--customPlatform", "custom_platform_deprecated", hidden=True,
              help="Deprecated: use --custom-platform.")
@click.option("--tarPath", "tar_path_deprecated", hidden=True,
              help="Deprecated: use --tar-path.")
@click.option("--reproducible", **_BOOL,
              help="Strip timestamps out of the built image and make it reproducible.")
@click.pass_context
def main(ctx: click.Context, /, **flags: object) -> None:
    """Build a container image from a Dockerfile and push it, the way kaniko does."""
    if ctx.invoked_subcommand is not None:
        return
    sys.exit(_run_build(flags))


@main.command()
def version() -> None:
    """Print kiln's version."""
    click.echo(f"Kiln version : v{__version__}")


def _run_build(flags: dict[str, object]) -> int:
    from executor.log import error_line, setup_logging
    from executor.pid1 import BuildInterrupted, install_handlers, spawn_by_fork

    install_handlers()
    spawn_by_fork()
    setup_logging(str(flags["verbosity"]), str(flags["log_format"]), bool(flags["log_timestamp"]))
    debug = flags["verbosity"] in ("debug", "trace")
    try:
        options = _options_from_flags(flags)
        from executor.build import run_build

        run_build(options)
    except BuildInterrupted as exc:
        click.echo(error_line(f"error building image: {exc}"), err=True)
        exit_without_waiting(exc.exit_code)
    except KeyboardInterrupt:
        log.error("build interrupted: nothing was pushed")
        return 130
    except Exception as exc:
        return without_stragglers(report_error(exc, debug))
    return 0


def without_stragglers(code: int) -> int:
    """``code``, for an error exit; but exit at once if a worker thread is still busy.

    A failed build leaves its base-layer downloads cancelled, yet a download thread may still
    wait for a registry's answer (no response yet, so no socket to cut) or sleep before a
    retry; a normal exit would join it and hang until the read timeout (two minutes). Nothing
    it does is wanted any more: its half-written file is removed by the next build.
    """
    import threading

    main = threading.main_thread()
    if any(t is not main and not t.daemon and t.is_alive() for t in threading.enumerate()):
        exit_without_waiting(code)
    return code


def exit_without_waiting(code: int) -> NoReturn:
    """Exit now, once the build's own cleanup (its ``finally`` blocks) has run.

    A normal exit joins every thread, and a download thread may be blocked connecting to a
    stalled registry or sleeping before a retry; after a stop signal nothing it does is wanted,
    and the kubelet's SIGKILL follows 30 s after its SIGTERM.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def report_error(exc: BaseException, debug: bool, doing: str = "building image") -> int:
    """Print a user error as one line (``error DOING: ...``); keep the traceback for what is a
    kiln bug."""
    from executor.errors import KilnError
    from executor.log import error_line
    from snapshot.errors import SnapshotError

    if isinstance(exc, KilnError | SnapshotError):
        if debug:
            log.debug("traceback", exc_info=exc)
        click.echo(error_line(f"error {doing}: {exc}"), err=True)
        return exc.exit_code if isinstance(exc, KilnError) else 1
    if isinstance(exc, OSError):
        # The last net under snapshot.errors.storage_errors: a full disk or an I/O error that
        # no place named is still one line (the OS's reason, and any file it names).
        from snapshot.errors import describe_os_error

        click.echo(error_line(f"error {doing}: {describe_os_error(exc)}"), err=True)
        if debug:
            log.debug("traceback", exc_info=exc)
        return 1
    raise exc


#: kaniko's deprecated spellings, still common in CI files: the flag each stands for.
_DEPRECATED = {"whitelist_var_run": ("--whitelist-var-run", "ignore_var_run", "--ignore-var-run"),
               "snapshot_mode_deprecated": ("--snapshotMode", "snapshot_mode", "--snapshot-mode"),
               "custom_platform_deprecated": ("--customPlatform", "custom_platform",
                                              "--custom-platform"),
               "tar_path_deprecated": ("--tarPath", "tar_path", "--tar-path")}


#: kaniko marks --whitelist-var-run deprecated through cobra, whose message reads differently
#: (word for word, the new flag without its dashes); kiln logs it as a warning like the others.
_DEPRECATION_MESSAGES = {"whitelist_var_run": "Flag %s has been deprecated, Please use "
                                              "ignore-var-run instead."}
#: The defaults of flags with an old spelling: given alongside it, a default is no conflict.
_DEFAULTS: dict[str, object] = {"snapshot_mode": "full", "ignore_var_run": True}


def env_bool(name: str) -> bool:
    """A boolean from the environment as kaniko reads one (Go's ``strconv.ParseBool``): unset
    or unreadable is false."""
    return os.environ.get(name, "").strip() in ("1", "t", "T", "TRUE", "true", "True")


def _resolve_old_spellings(flags: dict[str, object]) -> dict[str, object]:
    """Flags as kaniko reads them: a deprecated spelling wins, with kaniko's warning, and
    ``--bucket NAME`` is the context ``gs://NAME`` unless ``--context`` names a directory
    (kaniko ignores the bucket even when ``--context`` is left at its default)."""
    from executor.errors import OptionsError

    flags = dict(flags)
    if flags.get("force_build_metadata"):
        log.warning("Flag --force-build-metadata is deprecated. This is the new default "
                    "behaviour")
    for key, (old, name, new) in _DEPRECATED.items():
        if flags.get(key) is not None:
            if key in _DEPRECATION_MESSAGES:
                log.warning(_DEPRECATION_MESSAGES[key], old)
            else:
                log.warning("Flag %s is deprecated. Use: %s", old, new)
            given = flags.get(name)
            if given is not None and given != flags[key] and given != _DEFAULTS.get(name):
                raise OptionsError(f"{old} {flags[key]} and {new} {given} disagree; "
                                   f"give {new} only")
            flags[name] = flags[key]
    bucket, context = flags.get("bucket"), flags.get("context")
    if bucket and context and "://" not in str(context):
        log.warning("--bucket %s is not used: --context %s names a directory", bucket, context)
    elif bucket:
        flags["context"] = bucket if "://" in str(bucket) else f"gs://{bucket}"
    flags["context"] = flags["context"] or "/workspace/"
    return flags


def _options_from_flags(flags: dict[str, object]) -> BuildOptions:
    from executor.attest import parse_attest
    from executor.contexts import is_remote
    from executor.errors import OptionsError
    from executor.options import (
        DEFAULT_KANIKO_DIR,
        parse_git_options,
        parse_key_values,
        parse_secrets,
    )

    flags = _resolve_old_spellings(flags)
    raw_context, sub_path = str(flags["context"]), str(flags["context_sub_path"] or "")
    kaniko_dir = flags["kaniko_dir"]
    remote = is_remote(raw_context)
    context = Path(raw_context.removeprefix("dir://"))
    if remote:  # fetched there before the build, by executor.contexts
        context = (Path(str(kaniko_dir)) if kaniko_dir else DEFAULT_KANIKO_DIR) / "buildcontext"
    elif sub_path:
        if not (context / sub_path).is_dir():
            raise OptionsError(f"--context-sub-path {sub_path}: no such directory in "
                               f"{raw_context}")
        context = context / sub_path
    raw_dockerfile = str(flags["dockerfile"])
    dockerfile_url = raw_dockerfile if raw_dockerfile.startswith(("https://", "http://")) else None
    dockerfile = Path(raw_dockerfile)
    if not remote and not dockerfile.is_absolute() and not dockerfile.exists():
        dockerfile = context / dockerfile
    root = Path(str(flags["root"]))
    return dataclasses.replace(
        pull_options(flags),
        context=context,
        dockerfile=dockerfile,
        destinations=tuple(str(d) for d in flags["destinations"]),  # type: ignore[attr-defined]
        no_push=bool(flags["no_push"]),
        tar_path=_path(flags["tar_path"]),
        oci_layout_path=_path(flags["oci_layout_path"]),
        digest_file=_path(flags["digest_file"]),
        image_name_with_digest_file=_path(flags["image_name_with_digest_file"]),
        image_name_tag_with_digest_file=_path(flags["image_name_tag_with_digest_file"]),
        build_args=parse_key_values(_strs(flags["build_args"]), "--build-arg",
                                    bare_from_env=True),
        labels=parse_key_values(_strs(flags["labels"]), "--label"),
        annotations=parse_key_values(_strs(flags["annotations"]), "--annotation"),
        image_format=str(flags["image_format"]) if flags["image_format"] else None,
        target=str(flags["target"]) if flags["target"] else None,
        skip_push_permission_check=bool(flags["skip_push_permission_check"]),
        image_fs_extract_retry=int(str(flags["image_fs_extract_retry"])),
        push_retry=int(str(flags["push_retry"])),
        push_ignore_immutable_tag_errors=bool(flags["push_ignore_immutable_tag_errors"]),
        force=bool(flags["force"]),
        kaniko_dir=Path(str(kaniko_dir)) if kaniko_dir else DEFAULT_KANIKO_DIR,
        kaniko_dir_given=bool(kaniko_dir),
        root=root if root.is_absolute() else Path(os.path.abspath(root)),
        compression=str(flags["compression"]),
        compression_level=int(str(flags["compression_level"])),
        ignore_paths=_strs(flags["ignore_paths"]),
        ignore_var_run=bool(flags["ignore_var_run"]),
        skip_unused_stages=bool(flags["skip_unused_stages"]),
        single_snapshot=bool(flags["single_snapshot"]),
        snapshot_mode=str(flags["snapshot_mode"]),
        cleanup=bool(flags["cleanup"]),
        secrets=parse_secrets(_strs(flags["secrets"])),
        attest=parse_attest(_strs(flags["attest"])),
        reproducible=bool(flags["reproducible"]),
        context_source=raw_context if remote else None,
        context_sub_path=sub_path if remote else "",
        git=parse_git_options(_strs(flags["git_options"])),
        dockerfile_url=dockerfile_url,
        cache=bool(flags["cache"]),
        cache_repo=str(flags["cache_repo"] or ""),
        cache_ttl_s=duration_s("--cache-ttl", str(flags["cache_ttl"])),
        cache_run_layers=bool(flags["cache_run_layers"]),
        no_push_cache=bool(flags["no_push_cache"]),
        cache_dir=Path(str(flags["cache_dir"])),
        dryrun=bool(flags["dryrun"]),
        pre_cleanup=bool(flags["pre_cleanup"]),
        credential_helpers=_credential_helpers(_strs(flags["credential_helpers"])),
        report_path=_path(flags["report_path"]),
    ).validate()


def _credential_helpers(values: tuple[str, ...]) -> tuple[str, ...] | None:
    """``--credential-helpers`` as the fork reads it: not given is every built-in source, an
    empty value none (one value a flag, as the fork's repeatable flag takes them)."""
    if not values:
        return None
    return tuple(value.strip() for value in values if value.strip())


def pull_options(flags: dict[str, object]) -> BuildOptions:
    """The settings of ``pull_flags`` (and ``--custom-platform``), the part of BuildOptions the
    ``warmer`` shares; the executor adds the rest."""
    from executor.options import (
        BuildOptions,
        parse_client_certs,
        parse_key_values,
        parse_registry_maps,
    )

    return BuildOptions(
        context=Path("."),
        dockerfile=Path("Dockerfile"),
        insecure=bool(flags["insecure"]),
        insecure_pull=bool(flags["insecure_pull"]),
        insecure_registries=_strs(flags["insecure_registries"]),
        skip_tls_verify=bool(flags["skip_tls_verify"]),
        skip_tls_verify_pull=bool(flags["skip_tls_verify_pull"]),
        skip_tls_verify_registries=_strs(flags["skip_tls_verify_registries"]),
        registry_certificates={
            registry: Path(path) for registry, path in parse_key_values(
                _strs(flags["registry_certificates"]), "--registry-certificate").items()},
        registry_client_certs=parse_client_certs(_strs(flags["registry_client_certs"])),
        registry_mirrors=_strs(flags["registry_mirrors"]),
        registry_maps=parse_registry_maps(_strs(flags["registry_maps"])),
        skip_default_registry_fallback=bool(flags["skip_default_registry_fallback"]),
        image_download_retry=int(str(flags["image_download_retry"])),
        custom_platform=str(flags["custom_platform"]) if flags["custom_platform"] else None,
    )


def duration_s(flag: str, text: str) -> float:
    from executor.durations import parse_duration_ns
    from executor.errors import OptionsError

    try:
        return parse_duration_ns(text) / 1e9
    except ValueError:
        raise OptionsError(f"{flag} {text}: not a duration (like 336h or 90m)") from None


def _path(value: object) -> Path | None:
    return Path(str(value)) if value else None


def _strs(value: object) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, tuple | list) else ()


if __name__ == "__main__":
    main()
