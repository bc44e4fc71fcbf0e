"""The layer tars of an image in a registry, entry by entry, as their bytes say.

The conformance description (``compare.py``) sees the unpacked tree, which hides everything a
tar writer decides that unpacking forgets: the order of entries, ``uname``/``gname``, sub-second
mtimes in PAX records, which parent directories a layer repeats, how a whiteout is spelt, the
shape of an empty layer. Those are visible to digest-sensitive tools and to anyone comparing
layer bytes, so this reads the tars header by header (not through :mod:`tarfile`, which strips
a directory's trailing slash and merges PAX records into the member) and reports each field.
"""

from __future__ import annotations

import gzip
import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

BLOCK = 512

_MANIFEST_TYPES = ", ".join((
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
))


@dataclass
class TarEntry:
    """One member of a layer tar, with the header fields as written."""

    name: str           # the full name: PAX ``path``, else prefix + "/" + name, as stored
    typeflag: str
    mode: int
    uid: int
    gid: int
    uname: str
    gname: str
    size: int
    mtime: str          # the header's seconds, or the PAX ``mtime`` record when there is one
    linkname: str
    devmajor: int
    devminor: int
    magic: str          # "ustar\\x0000" (POSIX/PAX) or "ustar  \\x00" (GNU)
    pax: dict[str, str] = field(default_factory=dict)
    pax_header_name: str = ""  # the name of the ``x`` header before it, if any
    gnu_long: bool = False     # an ``L``/``K`` GNU long-name header came before it


@dataclass
class LayerTar:
    """A layer blob: its entries and the facts about its bytes around them."""

    entries: list[TarEntry]
    tar_size: int            # bytes of the uncompressed tar
    trailing_zero_blocks: int
    blob_size: int           # bytes of the compressed blob
    gzip_header: str         # the first 10 bytes of the blob, hex (mtime, xfl, OS byte)
    media_type: str
    digest: str


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _number(raw: bytes) -> int:
    if raw and raw[0] & 0x80:  # base-256 (GNU and Go for large values)
        value = raw[0] & 0x3F
        for byte in raw[1:]:
            value = value << 8 | byte
        return -value if raw[0] & 0x40 else value
    text = raw.replace(b"\0", b" ").strip()
    return int(text, 8) if text else 0


def _pax_records(data: bytes) -> dict[str, str]:
    records: dict[str, str] = {}
    while data:
        length_text, _, _ = data.partition(b" ")
        length = int(length_text)
        record = data[len(length_text) + 1:length - 1]
        key, _, value = record.partition(b"=")
        records[key.decode()] = value.decode("utf-8", "surrogateescape")
        data = data[length:]
    return records


def parse_tar(data: bytes) -> tuple[list[TarEntry], int]:
    """The entries of the tar ``data`` and how many zero blocks end it."""
    entries: list[TarEntry] = []
    pax: dict[str, str] = {}
    pax_name = ""
    long_name = long_link = ""
    offset = 0
    zeros = 0
    while offset + BLOCK <= len(data):
        block = data[offset:offset + BLOCK]
        offset += BLOCK
        if block == bytes(BLOCK):
            zeros += 1
            continue
        typeflag = chr(block[156]) if block[156] else "0"
        size = _number(block[124:136])
        body = data[offset:offset + size]
        offset += -(-size // BLOCK) * BLOCK
        if typeflag in ("x", "g"):
            pax.update(_pax_records(body))
            pax_name = _text(block[0:100])
            continue
        if typeflag in ("L", "K"):
            text = body.rstrip(b"\0").decode("utf-8", "surrogateescape")
            long_name, long_link = (text, long_link) if typeflag == "L" else (long_name, text)
            continue
        prefix, name = _text(block[345:500]), _text(block[0:100])
        full = f"{prefix}/{name}" if prefix else name
        entries.append(TarEntry(
            name=pax.get("path", long_name or full), typeflag=typeflag,
            mode=_number(block[100:108]), uid=int(pax.get("uid", _number(block[108:116]))),
            gid=int(pax.get("gid", _number(block[116:124]))),
            uname=pax.get("uname", _text(block[265:297])),
            gname=pax.get("gname", _text(block[297:329])),
            size=int(pax.get("size", size)), mtime=pax.get("mtime", str(_number(block[136:148]))),
            linkname=pax.get("linkpath", long_link or _text(block[157:257])),
            devmajor=_number(block[329:337]), devminor=_number(block[337:345]),
            magic=block[257:265].decode("latin-1"), pax=pax, pax_header_name=pax_name,
            gnu_long=bool(long_name or long_link)))
        pax, pax_name, long_name, long_link = {}, "", "", ""
    return entries, zeros


def _get(url: str, accept: str = "") -> bytes:
    """The body of ``url`` on the loopback registry."""
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=60) as response:
        body: bytes = response.read()
        return body


def _image_manifest(registry_host: str, repository: str, reference: str) -> dict[str, Any]:
    data = _get(f"http://{registry_host}/v2/{repository}/manifests/{reference}",
                _MANIFEST_TYPES)
    manifest: dict[str, Any] = json.loads(data)
    if "manifests" in manifest:  # an index: the image, not an attestation manifest
        image = next(m for m in manifest["manifests"]
                     if m.get("platform", {}).get("os") != "unknown")
        return _image_manifest(registry_host, repository, image["digest"])
    return manifest


def fetch_layers(ref: str, skip: int = 0) -> Iterator[LayerTar]:
    """The layers of ``ref`` (``HOST/REPO:TAG`` on a plain-HTTP registry) after the first
    ``skip``, in order."""
    host, _, rest = ref.partition("/")
    repository, _, tag = rest.rpartition(":")
    manifest = _image_manifest(host, repository, tag)
    for layer in manifest["layers"][skip:]:
        blob = _get(f"http://{host}/v2/{repository}/blobs/{layer['digest']}")
        tar = gzip.decompress(blob) if blob[:2] == b"\x1f\x8b" else blob
        entries, zeros = parse_tar(tar)
        yield LayerTar(entries, len(tar), zeros, len(blob), blob[:10].hex(),
                       layer["mediaType"], layer["digest"])


_COMPARED = ("typeflag", "mode", "uid", "gid", "uname", "gname", "size", "linkname",
             "devmajor", "devminor", "magic", "pax_header_name", "gnu_long")


def _show_entry(entry: TarEntry) -> str:
    pax = ",".join(f"{k}={v[:40]!r}" for k, v in sorted(entry.pax.items()))
    return (f"{entry.name} {entry.typeflag} {entry.mode:o} {entry.uid}:{entry.gid} "
            f"{entry.uname!r}/{entry.gname!r} size={entry.size} mtime={entry.mtime}"
            f"{' -> ' + entry.linkname if entry.linkname else ''} {{{pax}}}")


def diff_layer(index: int, want: LayerTar, got: LayerTar,
               labels: tuple[str, str] = ("buildkit", "kiln"), *, mtimes: bool = True,
               compression: bool = True) -> list[str]:
    """Every difference between two layers' tars, one line each. ``mtimes`` False leaves out
    mtime values (the build's own times differ by nature; PAX records still show a fraction);
    ``compression`` False the compressed bytes' size and gzip header (a departure, README)."""
    a, b = labels
    lines: list[str] = []
    where = f"layer {index}"
    facts = ("tar_size", "trailing_zero_blocks", "media_type") + (
        ("gzip_header", "blob_size") if compression else ())
    for name in facts:
        if getattr(want, name) != getattr(got, name):
            lines.append(f"{where}: {name} {a} {getattr(want, name)}, {b} {getattr(got, name)}")
    want_by = {e.name: e for e in want.entries}
    got_by = {e.name: e for e in got.entries}
    for name in want_by.keys() - got_by.keys():
        lines.append(f"{where}: only in {a}: {_show_entry(want_by[name])}")
    for name in got_by.keys() - want_by.keys():
        lines.append(f"{where}: only in {b}: {_show_entry(got_by[name])}")
    common = [e.name for e in want.entries if e.name in got_by]
    common_got = [e.name for e in got.entries if e.name in want_by]
    if common != common_got:
        at = next(i for i, (x, y) in enumerate(zip(common, common_got, strict=True)) if x != y)
        lines.append(f"{where}: order differs at entry {at}: {a} {common[at:at + 4]}, "
                     f"{b} {common_got[at:at + 4]}")
    for name in common:
        e, g = want_by[name], got_by[name]
        parts = [f"{k} {a} {getattr(e, k)!r}, {b} {getattr(g, k)!r}" for k in _COMPARED
                 if getattr(e, k) != getattr(g, k)]
        if e.pax != g.pax:
            parts.append(f"pax {a} {e.pax}, {b} {g.pax}")
        if mtimes and e.mtime != g.mtime:
            parts.append(f"mtime {a} {e.mtime}, {b} {g.mtime}")
        if parts:
            lines.append(f"{where}: {name}: " + "; ".join(parts))
    return lines


def show_layer(index: int, layer: LayerTar) -> list[str]:
    """A layer as lines: its byte facts, then one line per entry."""
    head = (f"layer {index}: {layer.media_type} blob {layer.blob_size} B, tar "
            f"{layer.tar_size} B, {layer.trailing_zero_blocks} zero blocks, gzip header "
            f"{layer.gzip_header}")
    return [head, *("  " + _show_entry(e) for e in layer.entries)]


def layer_count(ref: str) -> int:
    """How many layers ``ref`` has (its manifest only)."""
    host, _, rest = ref.partition("/")
    repository, _, tag = rest.rpartition(":")
    return len(_image_manifest(host, repository, tag)["layers"])


def _mtime_class(mtime: str) -> str:
    """What a conformance fixture keeps of an mtime: zero, whole seconds, or a fraction."""
    if "." in mtime and mtime.rstrip("0").rstrip(".") != mtime.partition(".")[0]:
        return "frac"
    return "0" if float(mtime) == 0 else "s"


def summarise_entry(entry: TarEntry) -> str:
    """One entry as a fixture line: name, type, mode, owner, names, mtime class, PAX keys,
    and a hard link's first name. Sizes, contents and times belong to the file description."""
    link = f" -> {entry.linkname}" if entry.typeflag == "1" else ""
    pax = ",".join(sorted(entry.pax))
    return (f"{entry.name} {entry.typeflag} {entry.mode:04o} {entry.uid}:{entry.gid} "
            f"{entry.uname!r}:{entry.gname!r} mtime={_mtime_class(entry.mtime)} "
            f"pax=[{pax}]{link}")


def summarise_layers(ref: str, skip: int) -> list[dict[str, Any]]:
    """The layer-level facts a conformance fixture records for ``ref``'s layers after the
    first ``skip`` (the base image's): each entry in order (:func:`summarise_entry`), and for
    a layer with no entries the digest of its blob (BuildKit's empty layer is one blob)."""
    out: list[dict[str, Any]] = []
    for layer in fetch_layers(ref, skip):
        summary: dict[str, Any] = {"entries": [summarise_entry(e) for e in layer.entries]}
        if not layer.entries:
            summary["empty_blob"] = layer.digest
        out.append(summary)
    return out


def diff_layer_summaries(want: list[dict[str, Any]], got: list[dict[str, Any]],
                         labels: tuple[str, str] = ("expected", "kiln")) -> list[str]:
    """Lines naming each difference between two :func:`summarise_layers` results."""
    a, b = labels
    if len(want) != len(got):
        return [f"layer entries: {a} {len(want)} layers, {b} {len(got)}"]
    lines: list[str] = []
    for index, (w, g) in enumerate(zip(want, got, strict=True)):
        if w.get("empty_blob") != g.get("empty_blob"):
            lines.append(f"layer {index}: empty blob {a} {w.get('empty_blob')}, "
                         f"{b} {g.get('empty_blob')}")
        if w["entries"] == g["entries"]:
            continue
        only_w = [e for e in w["entries"] if e not in g["entries"]]
        only_g = [e for e in g["entries"] if e not in w["entries"]]
        lines += [f"layer {index}: only in {a}: {e}" for e in only_w]
        lines += [f"layer {index}: only in {b}: {e}" for e in only_g]
        if not only_w and not only_g:
            lines.append(f"layer {index}: entries in another order: {a} {w['entries']}, "
                         f"{b} {g['entries']}")
    return lines
