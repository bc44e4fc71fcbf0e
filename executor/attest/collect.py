"""From a finished build to its statements: what ``executor/build.py`` hands over, and the
statements ``executor/publish.py`` attaches once the image manifest's digest is known."""

from __future__ import annotations

import hashlib
import logging
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from executor.attest import AttestRequest, attach, provenance, sbom
from executor.attest.provenance import BaseImage, BuildFacts
from executor.contexts import is_git_url
from executor.errors import OptionsError
from executor.options import BuildOptions

log = logging.getLogger("kiln")

TOOL = "kiln-0.1.0"


@dataclass
class Pending:
    """The build's facts and, for an SBOM, what the target's root held at the end."""

    requests: tuple[AttestRequest, ...]
    facts: BuildFacts
    packages: list[sbom.FoundPackage] | None
    root: Path
    pinned: datetime | None

    def statements(self, subjects: list[tuple[str, str]], image_name: str
                   ) -> list[tuple[AttestRequest, dict[str, Any]]]:
        """One in-toto statement per request, about ``subjects`` (purl, digest)."""
        out: list[tuple[AttestRequest, dict[str, Any]]] = []
        for request in self.requests:
            if request.kind == "provenance":
                predicate = provenance.provenance_predicate(self.facts, request.mode,
                                                            request.builder_id, self.pinned)
                out.append((request, provenance.statement(subjects, predicate,
                                                          provenance.PREDICATE_TYPE)))
            elif self.packages is not None:
                _require_spdx_tools()
                started = time.monotonic()
                document = sbom.spdx_document(self.packages, self.root, image_name,
                                              self.pinned or self.facts.finished, TOOL)
                predicate = provenance.scrub(sbom.spdx_json(document), self.facts.secrets)
                log.info("SBOM: %d packages, %d files (%.1fs)", len(self.packages),
                         len(predicate.get("files") or []), time.monotonic() - started)
                out.append((request, provenance.statement(subjects, predicate,
                                                          sbom.PREDICATE_TYPE)))
        return out


def gather(options: BuildOptions, *, started: datetime, platform: str,
           base_digests: Mapping[str, str], root_is_target: bool,
           skip: Callable[[str], bool], secrets: Mapping[str, bytes],
           fetched: list[tuple[str, str]] | None = None) -> Pending:
    """Collect now, before ``--cleanup`` removes the root: the SBOM's packages need it."""
    finished = datetime.now(UTC)
    content = options.dockerfile.read_bytes()
    try:
        dockerfile_path = str(options.dockerfile.resolve().relative_to(options.context.resolve()))
    except ValueError:
        dockerfile_path = options.dockerfile.name
    source = options.context_source
    facts = BuildFacts(
        dockerfile_path=dockerfile_path,
        dockerfile_digest=hashlib.sha256(content).hexdigest(),
        platform=platform, started=started, finished=finished, target=options.target,
        build_args=dict(options.build_args),
        base_images=[BaseImage(name, digest, platform) for name, digest in base_digests.items()],
        context_source=source,
        context_commit=_git_commit(options.context) if source and is_git_url(source) else None,
        add_urls=list(dict.fromkeys(fetched or [])),
        secrets=list(secrets.values()))
    packages = None
    if any(r.kind == "sbom" for r in options.attest):
        if root_is_target:
            began = time.monotonic()
            packages = sbom.scan_root(options.root, skip)
            log.info("SBOM scan of the target's root: %d packages in %.2fs", len(packages),
                     time.monotonic() - began)
        else:
            log.warning("--attest type=sbom: the root does not hold the target stage at the "
                        "end of the build; no SBOM")
    return Pending(options.attest, facts, packages, options.root,
                   provenance.pinned_time(options.reproducible))


def _require_spdx_tools() -> None:
    try:
        import spdx_tools  # noqa: F401
    except ImportError:
        raise OptionsError("--attest type=sbom needs the spdx-tools package "
                           "(pip install 'kiln[sbom]')") from None


def _git_commit(directory: Path) -> str | None:
    """The commit the git context was checked out at (``git rev-parse HEAD``)."""
    try:
        result = subprocess.run(["git", "-C", str(directory), "rev-parse", "HEAD"],
                                capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and len(commit) in (40, 64) else None


def subjects_for(names: list[str], digest: str, platform: str) -> list[tuple[str, str]]:
    """BuildKit's subject names: ``pkg:docker/NAME@TAG?platform=...`` per destination."""
    return [(provenance.docker_purl(name, platform), digest) for name in names] or [
        ("pkg:docker/image@latest?platform=" + platform.replace("/", "%2F"), digest)]


__all__ = ["Pending", "attach", "gather", "subjects_for"]
