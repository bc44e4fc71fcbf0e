"""Supply-chain attestations attached to the image, as BuildKit attaches them (issue 16).

``--attest type=provenance[,mode=min|max]`` makes a SLSA provenance v1 statement
(``provenance.py``), ``--attest type=sbom`` an SPDX 2.3 document of the target stage's final root
(``sbom.py``); ``attach.py`` wraps them in an attestation manifest and an image index. The option
syntax is BuildKit's (``docker buildx build --attest``) so CI scripts carry over.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from executor.errors import OptionsError

KINDS = ("provenance", "sbom")


@dataclass(frozen=True)
class AttestRequest:
    """One ``--attest`` flag: what to make, how much to say, and where else to write it."""

    kind: str
    mode: str = "min"  # provenance only: BuildKit's default is min
    dest: Path | None = None
    builder_id: str | None = None


def parse_attest(values: tuple[str, ...]) -> tuple[AttestRequest, ...]:
    """``--attest type=provenance,mode=max`` / ``--attest type=sbom,dest=DIR`` (repeatable)."""
    out: dict[str, AttestRequest] = {}
    for value in values:
        fields: dict[str, str] = {}
        for pair in value.split(","):
            key, sep, text = pair.partition("=")
            if not sep:
                raise OptionsError(f"--attest {value!r}: expected key=value pairs "
                                   "(type=provenance,mode=max)")
            fields[key.strip()] = text.strip()
        kind = fields.pop("type", "")
        if kind not in KINDS:
            raise OptionsError(f"--attest {value!r}: type must be provenance or sbom")
        mode = fields.pop("mode", "min")
        if kind == "provenance" and mode not in ("min", "max"):
            raise OptionsError(f"--attest {value!r}: mode must be min or max")
        dest = fields.pop("dest", None)
        builder_id = fields.pop("builder-id", None)
        if fields:
            raise OptionsError(f"--attest {value!r}: unknown key {sorted(fields)[0]!r}")
        out[kind] = AttestRequest(kind, mode, Path(dest) if dest else None, builder_id)
    return tuple(out.values())
