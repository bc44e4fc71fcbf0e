"""An SPDX 2.3 SBOM of a root filesystem: what each package database in it says is installed.

The scanning is kiln's own: dpkg's status file and ``info/*.list``, apk's installed database,
Python distributions (``*.dist-info/METADATA`` and ``RECORD``, ``*.egg-info/PKG-INFO``),
Node packages (``package.json`` under ``node_modules``) and Go binaries' embedded build info
(``gobuild.py``). The SPDX model, its JSON form and its validation are the SPDX project's own
library (``spdx-tools``), so the document is what SPDX readers expect. Files are listed where
the database names them, each with the SHA-1 SPDX 2.3 requires. Not scanned (yet): the rpm
database.
"""

from __future__ import annotations

import email.parser
import hashlib
import io
import json
import os
import re
import stat
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

PREDICATE_TYPE = "https://spdx.dev/Document"

#: Directories no package database describes and a walk must not enter.
_PSEUDO = frozenset({"proc", "sys", "dev"})


@dataclass
class FoundPackage:
    """One installed package as its database records it; ``files`` are root-relative."""

    ecosystem: str  # deb, apk, pypi, npm, golang
    name: str
    version: str
    purl: str
    files: list[str] = field(default_factory=list)
    source: str = ""  # the database file that says so, root-relative


def scan_root(root: Path, skip: Callable[[str], bool] = lambda rel: False) -> list[FoundPackage]:
    """Every package the databases under ``root`` record; ``skip(rel)`` hides kiln's own paths
    (an in-place build's executor) from the walk."""
    distro = _os_release_id(root)
    found = [*scan_dpkg(root, distro), *scan_apk(root, distro)]
    found.extend(_scan_tree(root, skip))
    return found


def _os_release_id(root: Path) -> str:
    for rel in ("etc/os-release", "usr/lib/os-release"):
        try:
            text = (root / rel).read_text(errors="replace")
        except OSError:
            continue
        match = re.search(r'^ID="?([A-Za-z0-9._-]+)"?\s*$', text, re.MULTILINE)
        if match:
            return match.group(1).lower()
    return "debian"


def _q(text: str) -> str:
    return urllib.parse.quote(text, safe="")


# --- dpkg ---------------------------------------------------------------------------------

def _paragraphs(text: str) -> Iterator[dict[str, str]]:
    """RFC 822-style stanzas (dpkg status): ``Key: value`` with indented continuation lines."""
    fields: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if not line.strip():
            if fields:
                yield fields
            fields, key = {}, ""
        elif line[0] in " \t" and key:
            fields[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    if fields:
        yield fields


def scan_dpkg(root: Path, distro: str) -> list[FoundPackage]:
    """``var/lib/dpkg/status`` entries whose status is ``installed``, files from ``info``."""
    status = root / "var/lib/dpkg/status"
    try:
        text = status.read_text(errors="replace")
    except OSError:
        return []
    info = root / "var/lib/dpkg/info"
    out: list[FoundPackage] = []
    for fields in _paragraphs(text):
        name, version = fields.get("Package"), fields.get("Version")
        if not name or not version or not fields.get("Status", "").endswith(" installed"):
            continue
        arch = fields.get("Architecture", "")
        files: list[str] = []
        for list_name in (f"{name}:{arch}.list", f"{name}.list"):
            try:
                lines = (info / list_name).read_text(errors="replace").splitlines()
            except OSError:
                continue
            files = [line.lstrip("/") for line in lines if line.strip() and line != "/."]
            break
        purl = f"pkg:deb/{distro}/{_q(name)}@{_q(version)}" + (f"?arch={_q(arch)}" if arch else "")
        out.append(FoundPackage("deb", name, version, purl, files, "var/lib/dpkg/status"))
    return out


# --- apk ----------------------------------------------------------------------------------

def scan_apk(root: Path, distro: str) -> list[FoundPackage]:
    """``lib/apk/db/installed``: ``P:`` name, ``V:`` version, ``F:`` directory, ``R:`` file."""
    try:
        text = (root / "lib/apk/db/installed").read_text(errors="replace")
    except OSError:
        return []
    distro = distro if distro != "debian" else "alpine"
    out: list[FoundPackage] = []
    for block in re.split(r"\n\s*\n", text):
        name = version = arch = directory = ""
        files: list[str] = []
        for line in block.splitlines():
            tag, _, value = line.partition(":")
            if tag == "P":
                name = value
            elif tag == "V":
                version = value
            elif tag == "A":
                arch = value
            elif tag == "F":
                directory = value
            elif tag == "R":
                files.append(f"{directory}/{value}" if directory else value)
        if name and version:
            purl = (f"pkg:apk/{distro}/{_q(name)}@{_q(version)}"
                    + (f"?arch={_q(arch)}" if arch else ""))
            out.append(FoundPackage("apk", name, version, purl, files, "lib/apk/db/installed"))
    return out


# --- Python and Node: one walk of the tree --------------------------------------------------

def _scan_tree(root: Path, skip: Callable[[str], bool]) -> Iterator[FoundPackage]:
    top = str(root)
    for directory, dirs, files in os.walk(top):
        rel_dir = os.path.relpath(directory, top)
        rel_dir = "" if rel_dir == "." else rel_dir
        if not rel_dir:
            dirs[:] = [d for d in dirs if d not in _PSEUDO]
        dirs[:] = [d for d in dirs if not skip(f"{rel_dir}/{d}" if rel_dir else d)]
        base = os.path.basename(directory)
        if base.endswith(".dist-info") and "METADATA" in files:
            found = _python_dist(root, rel_dir, "METADATA", "RECORD")
        elif base.endswith(".egg-info") and "PKG-INFO" in files:
            found = _python_dist(root, rel_dir, "PKG-INFO", "installed-files.txt")
        elif "package.json" in files and _is_node_package_dir(rel_dir):
            found = _node_package(root, rel_dir)
        else:
            found = None
        if found is not None:
            yield found
        for name in files:  # a single-file egg-info (distutils' PKG-INFO written as a file)
            if name.endswith(".egg-info") and os.path.isfile(os.path.join(directory, name)):
                rel = f"{rel_dir}/{name}" if rel_dir else name
                egg = _python_metadata(root / rel, rel, None)
                if egg is not None:
                    yield egg
            elif _is_executable(os.path.join(directory, name)):
                yield from _go_binary(root, f"{rel_dir}/{name}" if rel_dir else name)


def _is_executable(path: str) -> bool:
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return False
    return stat.S_ISREG(mode) and bool(mode & 0o111)


def _go_binary(root: Path, rel: str) -> Iterator[FoundPackage]:
    """A Go binary's main module (owning the binary), the modules linked into it and the
    standard library of the Go that built it, from its embedded build info."""
    from executor.attest.gobuild import read_build_info

    info = read_build_info(root / rel)
    if info is None:
        return
    if info.main is not None:
        yield FoundPackage("golang", info.main.path, info.main.version, info.main.purl, [rel],
                           rel)
    for dep in info.deps:
        yield FoundPackage("golang", dep.path, dep.version, dep.purl, [], rel)
    if info.go_version.startswith("go"):
        version = info.go_version[2:].split(" ", 1)[0]
        yield FoundPackage("golang", "stdlib", info.go_version,
                           f"pkg:golang/stdlib@{_q(version)}", [], rel)


def _is_node_package_dir(rel_dir: str) -> bool:
    parts = rel_dir.split("/")
    return (len(parts) >= 2 and parts[-2] == "node_modules") or (
        len(parts) >= 3 and parts[-3] == "node_modules" and parts[-2].startswith("@"))


def _python_dist(root: Path, rel_dir: str, metadata: str, record: str) -> FoundPackage | None:
    return _python_metadata(root / rel_dir / metadata, f"{rel_dir}/{metadata}",
                            (rel_dir, record))


def _python_metadata(path: Path, rel: str, record: tuple[str, str] | None
                     ) -> FoundPackage | None:
    """Name and Version from the metadata's headers; files from RECORD (relative to the
    directory holding the ``.dist-info``) or installed-files.txt (relative to the egg-info)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(65536).decode("utf-8", errors="replace")
    except OSError:
        return None
    headers = email.parser.Parser().parsestr(head.split("\n\n", 1)[0], headersonly=True)
    name, version = headers.get("Name"), headers.get("Version")
    if not name or not version:
        return None
    files: list[str] = []
    if record is not None:
        rel_dir, record_name = record
        files = _record_files(path.parent.parent if record_name == "RECORD" else path.parent,
                              path.parent / record_name, os.path.dirname(rel_dir)
                              if record_name == "RECORD" else rel_dir)
    normal = re.sub(r"[-_.]+", "-", name).lower()
    return FoundPackage("pypi", name, version, f"pkg:pypi/{_q(normal)}@{_q(version)}", files,
                        rel)


def _record_files(base: Path, listing: Path, rel_base: str) -> list[str]:
    try:
        text = listing.read_text(errors="replace")
    except OSError:
        return []
    out: list[str] = []
    for line in text.splitlines():
        entry = line.split(",", 1)[0].strip() if listing.name == "RECORD" else line.strip()
        if not entry or entry.startswith("/"):
            continue
        joined = os.path.normpath(os.path.join(rel_base, entry))
        if not joined.startswith(".."):
            out.append(joined)
    return out


def _node_package(root: Path, rel_dir: str) -> FoundPackage | None:
    try:
        data = json.loads((root / rel_dir / "package.json").read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    name, version = data.get("name"), data.get("version")
    if not isinstance(name, str) or not isinstance(version, str) or not name or not version:
        return None
    if name.startswith("@") and "/" in name:
        scope, _, short = name.partition("/")
        purl = f"pkg:npm/{_q(scope)}/{_q(short)}@{_q(version)}"
    else:
        purl = f"pkg:npm/{_q(name)}@{_q(version)}"
    return FoundPackage("npm", name, version, purl, [], f"{rel_dir}/package.json")


# --- the SPDX document ----------------------------------------------------------------------

def spdx_document(packages: list[FoundPackage], root: Path, image_name: str,
                  created: datetime, tool: str) -> Any:
    """The spdx-tools ``Document``: the image as the described package, CONTAINS each found
    package, which CONTAINS the regular files its database lists (SHA-1 as SPDX requires)."""
    from spdx_tools.spdx.model import (
        Actor,
        ActorType,
        Checksum,
        ChecksumAlgorithm,
        CreationInfo,
        Document,
        ExternalPackageRef,
        ExternalPackageRefCategory,
        File,
        Package,
        PackageVerificationCode,
        Relationship,
        RelationshipType,
        SpdxNoAssertion,
    )

    identity = hashlib.sha256(json.dumps([image_name, [p.purl for p in packages]]).encode())
    namespace = f"urn:uuid:{uuid.UUID(bytes=identity.digest()[:16], version=5)}"
    info = CreationInfo("SPDX-2.3", "SPDXRef-DOCUMENT", image_name, namespace,
                        [Actor(ActorType.TOOL, tool)], created.replace(microsecond=0))
    image = Package("SPDXRef-Image", image_name, SpdxNoAssertion(), files_analyzed=False,
                    primary_package_purpose=None)
    relationships = [Relationship("SPDXRef-DOCUMENT", RelationshipType.DESCRIBES,
                                  "SPDXRef-Image")]
    spdx_packages = [image]
    spdx_files: dict[str, Any] = {}
    top = os.path.realpath(root)
    hashes: dict[str, str] = {}
    for index, found in enumerate(packages):
        package_id = f"SPDXRef-Package-{found.ecosystem}-{index}"
        file_ids: list[str] = []
        for rel in found.files:
            sha1 = hashes.get(rel) or _sha1(top, rel)
            if sha1 is None:  # a directory, a symlink, a file since removed
                continue
            hashes[rel] = sha1
            if rel not in spdx_files:
                spdx_files[rel] = File(f"./{rel}", f"SPDXRef-File-{len(spdx_files)}",
                                       [Checksum(ChecksumAlgorithm.SHA1, sha1)])
            file_ids.append(spdx_files[rel].spdx_id)
        code = None
        if file_ids:
            joined = "".join(sorted(hashes[f.name[2:]] for f in
                                    (spdx_files[r] for r in found.files if r in spdx_files)))
            code = PackageVerificationCode(hashlib.sha1(joined.encode()).hexdigest())
        spdx_packages.append(Package(
            package_id, found.name, SpdxNoAssertion(), version=found.version,
            files_analyzed=bool(file_ids), verification_code=code,
            source_info=f"recorded in /{found.source}",
            external_references=[ExternalPackageRef(ExternalPackageRefCategory.PACKAGE_MANAGER,
                                                    "purl", found.purl)]))
        relationships.append(Relationship("SPDXRef-Image", RelationshipType.CONTAINS,
                                          package_id))
        relationships.extend(Relationship(package_id, RelationshipType.CONTAINS, file_id)
                             for file_id in dict.fromkeys(file_ids))
    return Document(info, packages=spdx_packages, files=list(spdx_files.values()),
                    relationships=relationships)


def _sha1(root: str, rel: str) -> str | None:
    """SHA-1 of a regular file inside the root; None for anything else, and for a path whose
    parent symlinks lead outside the root (never hash the builder's own files)."""
    real = os.path.realpath(os.path.join(root, rel))
    if not real.startswith(root + os.sep):
        return None
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        digest = hashlib.sha1()
        with os.fdopen(os.dup(fd), "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()
    finally:
        os.close(fd)


def spdx_json(document: Any, validate: bool = False) -> dict[str, Any]:
    """The document as SPDX 2.3 JSON (spdx-tools' writer), parsed back into a dict."""
    from spdx_tools.spdx.writer.json.json_writer import write_document_to_stream

    out = io.StringIO()
    write_document_to_stream(document, out, validate=validate)
    result: dict[str, Any] = json.loads(out.getvalue())
    return result
