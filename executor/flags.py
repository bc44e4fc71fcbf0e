"""Flags that more than one command takes: kaniko's boolean form, and the pull and log settings
the ``executor`` and the ``warmer`` share, so the two read a flag the same way."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

_F = TypeVar("_F", bound=Callable[..., Any])

# A kaniko boolean flag (Go's pflag): bare means true, and "--flag=false" or "--flag=true"
# (any of strconv.ParseBool's spellings) says so explicitly; CI files use all three forms.
BOOL: dict[str, Any] = {"type": click.BOOL, "is_flag": False, "flag_value": True,
                       "default": False, "metavar": "[=true|false]"}

VERBOSITY = click.Choice(["panic", "fatal", "error", "warn", "info", "debug", "trace"])

_PULL = [
    click.option("--insecure", **BOOL, help="Push to insecure registries over plain HTTP."),
    click.option("--insecure-pull", **BOOL, help="Pull from insecure registries over HTTP."),
    click.option("--insecure-registry", "insecure_registries", multiple=True,
                 help="Registry to reach over plain HTTP; repeatable."),
    click.option("--skip-tls-verify", **BOOL, help="Push without verifying TLS certificates."),
    click.option("--skip-tls-verify-pull", **BOOL,
                 help="Pull without verifying TLS certificates."),
    click.option("--skip-tls-verify-registry", "skip_tls_verify_registries", multiple=True,
                 help="Registry whose TLS certificate is not verified; repeatable."),
    click.option("--registry-certificate", "registry_certificates", multiple=True,
                 help="CA certificate to trust for a registry, as REGISTRY=PATH; repeatable."),
    click.option("--registry-client-cert", "registry_client_certs", multiple=True,
                 help="Client certificate for a registry (mTLS), as REGISTRY=CERT,KEY; "
                 "repeatable."),
    click.option("--registry-mirror", "registry_mirrors", multiple=True,
                 help="Mirror of Docker Hub to pull from first (host[/prefix]); repeatable."),
    click.option("--registry-map", "registry_maps", multiple=True,
                 help="Mirrors of other registries, as REGISTRY=MIRROR[;REGISTRY=MIRROR]; "
                 "repeatable."),
    click.option("--skip-default-registry-fallback", **BOOL,
                 help="Fail when no mirror has the image instead of trying the registry "
                 "itself."),
    click.option("--image-download-retry", type=int, default=0, show_default=True,
                 help="Number of retries for downloading the remote image."),
]

_LOG = [
    click.option("-v", "--verbosity", type=VERBOSITY, default="info", show_default=True,
                 help="Log level."),
    click.option("--log-format", type=click.Choice(["text", "color", "json"]), default="color",
                 show_default=True, help="Log format."),
    click.option("--log-timestamp", **BOOL, help="Timestamp each log line."),
]


def pull_flags(command: _F) -> _F:
    """The registry flags a pull reads: plain HTTP, TLS, certificates, mirrors, retries."""
    return _apply(_PULL, command)


def log_flags(command: _F) -> _F:
    """``--verbosity``, ``--log-format``, ``--log-timestamp``."""
    return _apply(_LOG, command)


def _apply(decorators: list[Callable[[Any], Any]], command: _F) -> _F:
    for decorator in reversed(decorators):
        command = decorator(command)
    return command
