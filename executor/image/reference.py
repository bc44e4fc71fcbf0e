"""Image references: the docker/distribution reference grammar with Docker's normalisation.

A user writes ``busybox``, ``user/app:1.2`` or ``reg.io:5000/team/app@sha256:...``; everything
else in kiln works on the fully qualified form (``docker.io/library/busybox:latest``). This
module is the one place that turns the first into the second, following
``distribution/reference`` (``reference.go``, ``regexp.go``, ``normalize.go``):

    reference        := name [ ":" tag ] [ "@" digest ]
    name             := [domain '/'] path-component ['/' path-component]*
    domain           := host [':' port-number]
    host             := domain-name | IPv4address | '[' IPv6address ']'
    domain-component := /([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])/
    path-component   := alpha-numeric [separator alpha-numeric]*
    alpha-numeric    := /[a-z0-9]+/
    separator        := /[_.]|__|[-]+/
    tag              := /[\\w][\\w.-]{0,127}/
    digest           := algorithm ":" hex

Normalisation: the first path component names a registry only when it contains ``.`` or ``:``
or is ``localhost``; otherwise the image is on Docker Hub (``docker.io``), where one-component
names live under ``library/``. A reference with neither tag nor digest gets ``:latest``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from executor.errors import ImageError

DOCKER_HUB = "docker.io"
#: Where Docker Hub's registry API actually answers.
DOCKER_HUB_API = "registry-1.docker.io"
#: Docker rewrites this old name of the Hub to ``docker.io``.
_LEGACY_HUB = "index.docker.io"
_OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"
#: distribution's NameTotalLengthMax: domain + "/" + path.
NAME_MAX = 255

_ALPHANUMERIC = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|-+)"
_PATH_COMPONENT = rf"{_ALPHANUMERIC}(?:{_SEPARATOR}{_ALPHANUMERIC})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_IPV6 = r"\[[a-fA-F0-9:]+\]"
_DOMAIN = rf"(?:{_DOMAIN_NAME}|{_IPV6})(?::[0-9]+)?"
_TAG = r"\w[\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

# re.ASCII: the grammar's \w is Go's, i.e. [0-9A-Za-z_], not Python's Unicode word class.
_DOMAIN_RE = re.compile(_DOMAIN, re.ASCII)
_PATH_RE = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*", re.ASCII)
_TAG_RE = re.compile(_TAG, re.ASCII)
_DIGEST_RE = re.compile(_DIGEST, re.ASCII)
_IDENTIFIER_RE = re.compile(r"[a-f0-9]{64}", re.ASCII)

#: Digest algorithms a registry can verify (go-digest's registered ones) and their hex length.
DIGEST_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}
_HEX_RE = re.compile(r"[a-f0-9]+", re.ASCII)

#: The full grammar in one expression, for tests and generators (not used to parse).
REFERENCE_PATTERN = (
    rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*(?::{_TAG})?(?:@{_DIGEST})?"
)


def _invalid(text: str, why: str) -> ImageError:
    return ImageError(f'invalid image reference "{text}": {why}')


def validate_digest(digest: str) -> str | None:
    """Why ``digest`` is not a digest a registry accepts, or None when it is one."""
    if not _DIGEST_RE.fullmatch(digest):
        return f'invalid digest "{digest}"'
    algorithm, _, hexpart = digest.partition(":")
    length = DIGEST_HEX_LENGTHS.get(algorithm)
    if length is None:
        return f'unsupported digest algorithm "{algorithm}"'
    if len(hexpart) != length or not _HEX_RE.fullmatch(hexpart):
        return f'invalid {algorithm} digest "{digest}": expected {length} lowercase hex digits'
    return None


@dataclass(frozen=True)
class ImageRef:
    """A fully qualified image reference. Build one with ``ImageRef.parse``.

    ``tag`` is None only when the reference names a digest and no tag (``app@sha256:...``).
    """

    registry: str
    repository: str
    tag: str | None = DEFAULT_TAG
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> ImageRef:
        """Parse and normalise ``text``; ``ImageError`` says what is wrong with it."""
        if not text:
            raise _invalid(text, "empty reference")
        if _IDENTIFIER_RE.fullmatch(text):
            raise _invalid(text, "a 64-character hexadecimal string is an image ID, not a name")

        rest, at, digest = text.partition("@")
        if at:
            why = validate_digest(digest)
            if why:
                raise _invalid(text, why)

        registry, remainder = _split_registry(rest)
        path, colon, tag = remainder.partition(":")
        if colon and not _TAG_RE.fullmatch(tag):
            raise _invalid(text, f'invalid tag "{tag}"')
        if not _DOMAIN_RE.fullmatch(registry):
            raise _invalid(text, f'invalid registry "{registry}"')
        if path.lower() != path:
            raise _invalid(text, "repository name must be lowercase")
        if registry == DOCKER_HUB and "/" not in path:
            path = _OFFICIAL_PREFIX + path
        if not _PATH_RE.fullmatch(path):
            raise _invalid(text, f'invalid repository name "{path}"')
        if len(registry) + 1 + len(path) > NAME_MAX:
            raise _invalid(text, f"repository name must not be more than {NAME_MAX} characters")

        if colon:
            return cls(registry, path, tag, digest if at else None)
        if at:
            return cls(registry, path, None, digest)
        return cls(registry, path, DEFAULT_TAG, None)

    @property
    def name(self) -> str:
        """``registry/repository``, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def reference(self) -> str:
        """What the registry API is asked for: the digest when there is one, else the tag."""
        if self.digest:
            return self.digest
        return self.tag or DEFAULT_TAG

    @property
    def api_host(self) -> str:
        """The host[:port] to send registry API requests to."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def familiar(self) -> str:
        """The short form Docker prints: ``busybox:latest``, ``user/app:1``, ``reg.io/a:1``."""
        name = self.name
        if self.registry == DOCKER_HUB and _split_registry(self.repository)[0] == DOCKER_HUB:
            name = self.repository.removeprefix(_OFFICIAL_PREFIX)
        return name + self._suffix()

    def with_digest(self, digest: str) -> ImageRef:
        """This image pinned to ``digest`` (the tag is kept, as ``name:tag@digest`` does)."""
        why = validate_digest(digest)
        if why:
            raise ImageError(f'cannot pin {self} to "{digest}": {why}')
        return replace(self, digest=digest)

    def with_tag(self, tag: str) -> ImageRef:
        """The same repository at ``tag``, with no digest."""
        if not _TAG_RE.fullmatch(tag):
            raise _invalid(f"{self.name}:{tag}", f'invalid tag "{tag}"')
        return replace(self, tag=tag, digest=None)

    def _suffix(self) -> str:
        return (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    def __str__(self) -> str:
        return self.name + self._suffix()


def _split_registry(name: str) -> tuple[str, str]:
    """(registry, rest) following distribution's ``splitDockerDomain``."""
    first, slash, rest = name.partition("/")
    if not slash or not ("." in first or ":" in first or first == "localhost"):
        return DOCKER_HUB, name
    if first == _LEGACY_HUB:
        first = DOCKER_HUB
    return first, rest
