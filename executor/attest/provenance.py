"""SLSA provenance v1 (https://slsa.dev/provenance/v1) in an in-toto Statement v1.

The shape follows what BuildKit v0.32 writes for ``--opt attest:provenance=mode=max`` where kiln
knows the same fact (``externalParameters.configSource`` / ``request``, base images in
``resolvedDependencies`` as ``pkg:docker`` purls with their digests, ``runDetails.metadata``
times); where BuildKit records its own internals (LLB, vertex digests) kiln records nothing.

Unlike BuildKit (which copies every build arg, proxy URLs with their passwords included), no
proxy variable, no value that contains a ``--secret`` and no userinfo of a URL is ever written:
a provenance document is published next to the image for anyone who can pull it.
"""

from __future__ import annotations

import hashlib
import os
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
#: What ``buildType`` names: a Dockerfile build by kiln, parameters as documented in the README.
BUILD_TYPE = "urn:kiln:buildtype:dockerfile:v1"
DEFAULT_BUILDER_ID = "urn:kiln:executor"

#: Docker's predefined proxy ARGs: their values routinely hold ``user:password@``.
PROXY_ARGS = frozenset(name for base in ("HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY",
                                         "ALL_PROXY") for name in (base, base.lower()))
REDACTED = "<redacted>"


@dataclass(frozen=True)
class BaseImage:
    """A FROM image as pulled: the name written in the Dockerfile and the manifest digest."""

    name: str
    digest: str
    platform: str


@dataclass
class BuildFacts:
    """What the build hands over for a provenance statement (executor/build.py fills it)."""

    dockerfile_path: str
    dockerfile_digest: str  # sha256 hex of the Dockerfile's bytes
    platform: str
    started: datetime
    finished: datetime
    target: str | None = None
    build_args: Mapping[str, str] = field(default_factory=dict)
    base_images: list[BaseImage] = field(default_factory=list)
    context_source: str | None = None  # git://, https://, s3://... as given to --context
    context_commit: str | None = None  # the git context's checked-out commit
    add_urls: list[tuple[str, str]] = field(default_factory=list)  # ADD (url, sha256 hex)
    secrets: list[bytes] = field(default_factory=list)  # values never to write


def pinned_time(reproducible: bool, environ: Mapping[str, str] = os.environ) -> datetime | None:
    """``SOURCE_DATE_EPOCH`` (as BuildKit honours it), else the epoch under ``--reproducible``:
    then the statement's bytes do not change from run to run."""
    epoch = environ.get("SOURCE_DATE_EPOCH", "").strip()
    if epoch.isdigit():
        return datetime.fromtimestamp(int(epoch), UTC)
    return datetime.fromtimestamp(0, UTC) if reproducible else None


def statement(subjects: Iterable[tuple[str, str]], predicate: dict[str, Any],
              predicate_type: str) -> dict[str, Any]:
    """An in-toto Statement v1 about ``subjects`` (name, ``sha256:`` digest)."""
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": digest.split(":", 1)[-1]}}
                    for name, digest in subjects],
        "predicateType": predicate_type,
        "predicate": predicate,
    }


def provenance_predicate(facts: BuildFacts, mode: str, builder_id: str | None = None,
                         pinned: datetime | None = None) -> dict[str, Any]:
    """The SLSA v1 predicate; ``mode`` ``max`` adds the build args, as BuildKit's does."""
    request: dict[str, Any] = {"frontend": "dockerfile.v0",
                               "locals": [{"name": "context"}, {"name": "dockerfile"}]}
    args: dict[str, str] = {}
    if mode == "max":
        args = {f"build-arg:{k}": v for k, v in sorted(facts.build_args.items())
                if k not in PROXY_ARGS}
    if facts.target:
        args["target"] = facts.target
    if args:
        request["args"] = args
    config_source: dict[str, Any] = {"path": facts.dockerfile_path,
                                     "digest": {"sha256": facts.dockerfile_digest}}
    if facts.context_source:
        config_source["uri"] = strip_userinfo(facts.context_source)
    predicate: dict[str, Any] = {
        "buildDefinition": {
            "buildType": BUILD_TYPE,
            "externalParameters": {"configSource": config_source, "request": request},
            "internalParameters": {"builderPlatform": facts.platform},
            "resolvedDependencies": resolved_dependencies(facts),
        },
        "runDetails": {
            "builder": {"id": builder_id or DEFAULT_BUILDER_ID},
            "metadata": {
                "startedOn": rfc3339(pinned or facts.started),
                "finishedOn": rfc3339(pinned or facts.finished),
            },
        },
    }
    scrubbed: dict[str, Any] = scrub(predicate, facts.secrets)
    return scrubbed


def resolved_dependencies(facts: BuildFacts) -> list[dict[str, Any]]:
    """Base images by digest, the git context at its commit, URLs fetched with their digest."""
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for base in facts.base_images:
        uri = docker_purl(base.name, base.platform)
        if uri in seen:
            continue
        seen.add(uri)
        out.append({"uri": uri, "digest": {"sha256": base.digest.split(":", 1)[-1]}})
    if facts.context_source:
        dep: dict[str, Any] = {"uri": strip_userinfo(facts.context_source)}
        if facts.context_commit:
            dep["digest"] = {"gitCommit": facts.context_commit}
        out.append(dep)
    for url, digest in facts.add_urls:
        dep = {"uri": strip_userinfo(url)}
        if digest:
            dep["digest"] = {"sha256": digest}
        out.append(dep)
    return out


def docker_purl(name: str, platform: str) -> str:
    """``pkg:docker/REGISTRY/REPO@TAG?platform=...``: how BuildKit names an image dependency."""
    repo, tag = name, "latest"
    if "@" in repo:
        repo, tag = repo.split("@", 1)
    else:
        slash = repo.rfind("/")
        colon = repo.rfind(":")
        if colon > slash:
            repo, tag = repo[:colon], repo[colon + 1:]
    quote = urllib.parse.quote
    return (f"pkg:docker/{quote(repo, safe='/')}@{quote(tag, safe='')}"
            f"?platform={quote(platform, safe='')}")


def strip_userinfo(url: str) -> str:
    """``https://user:token@host/x`` -> ``https://host/x``: credentials never reach a statement."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def scrub(value: Any, secrets: Iterable[bytes]) -> Any:
    """``value`` with every string that contains a secret's text replaced by ``<redacted>``.

    The last line of defence: a build arg, a URL or a path that happens to carry a ``--secret``
    value is not published. Secrets shorter than 4 bytes would redact half the document and are
    ignored."""
    texts = [s.decode(errors="replace").strip() for s in secrets]
    texts = [t for t in texts if len(t) >= 4]
    if not texts:
        return value

    def walk(item: Any) -> Any:
        if isinstance(item, str):
            return REDACTED if any(t in item for t in texts) else item
        if isinstance(item, dict):
            return {walk(k): walk(v) for k, v in item.items()}
        if isinstance(item, list):
            return [walk(v) for v in item]
        return item

    return walk(value)


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def sha256_file(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
