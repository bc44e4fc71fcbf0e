"""The registry client against a real CNCF distribution registry, with skopeo as the other side.

A small in-process HTTP server stands in for a registry only where the behaviour under test
(503 with Retry-After, a relative upload Location, a download that breaks off) is one the real
registry cannot be made to show.
"""

from __future__ import annotations

import http.server
import json
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import trustme

from executor.errors import ImageError, RegistryError
from executor.image.layout import add_to_index, write_blob, write_oci_layout
from executor.image.model import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    Platform,
    sha256_digest,
)
from executor.image.reference import ImageRef
from executor.registry.client import RegistryClient
from executor.registry.transport import Transport, TransportOptions
from tests.support.registry import Registry, free_port
from tests.unit.test_outputs import TinyImage, make_image, skopeo, skopeo_json

# --- helpers -----------------------------------------------------------------------------------


def insecure(host: str, **kwargs: Any) -> TransportOptions:
    return TransportOptions(insecure_registries=frozenset({host}), **kwargs)


@pytest.fixture
def client(registry: Registry) -> Iterator[RegistryClient]:
    with RegistryClient(insecure(registry.host)) as c:
        yield c


@pytest.fixture
def image(tmp_path: Path, request: pytest.FixtureRequest) -> TinyImage:
    # Content unique to the test, so blobs never already exist in the session's registry.
    return make_image(tmp_path / "blobs", {"etc/motd": request.node.name.encode()},
                      {"app/main": b"#!/bin/sh\necho " + request.node.name.encode()})


def ref_in(registry: Registry, name: str) -> ImageRef:
    return ImageRef.parse(f"{registry.host}/{name}")


def push_image(client: RegistryClient, ref: ImageRef, image: TinyImage) -> str:
    for layer in image.layers:
        client.push_blob(ref, layer.descriptor(), layer.path)
    config = Descriptor(OCI_CONFIG, image.config_digest, len(image.config_bytes))
    client.push_blob_bytes(ref, config, image.config_bytes)
    return client.push_manifest(ref, image.manifest_bytes, OCI_MANIFEST)


def push_with_skopeo(registry: Registry, layout: Path, tag: str, ref: ImageRef,
                     *extra: str) -> None:
    skopeo("copy", "--dest-tls-verify=false", "--preserve-digests", *extra,
           f"oci:{layout}:{tag}", f"docker://{ref}")


def count_requests(transport: Transport) -> list[tuple[str, str]]:
    """Every HTTP response the transport's session receives, as (method, url)."""
    seen: list[tuple[str, str]] = []

    def hook(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        seen.append((response.request.method or "", response.url))

    transport.session.hooks["response"].append(hook)
    return seen


def registry_blob_file(registry: Registry, digest: str) -> Path:
    hexpart = digest.partition(":")[2]
    return (registry.workdir / "data" / "docker" / "registry" / "v2" / "blobs" / "sha256"
            / hexpart[:2] / hexpart / "data")


# --- the transport policy ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "push", "insecure_", "verified"),
    [
        (TransportOptions(), True, False, True),
        (TransportOptions(), False, False, True),
        (TransportOptions(insecure=True), True, True, False),
        (TransportOptions(insecure=True), False, False, True),
        (TransportOptions(insecure_pull=True), False, True, False),
        (TransportOptions(insecure_pull=True), True, False, True),
        (TransportOptions(insecure_registries=frozenset({"reg.io"})), True, True, False),
        (TransportOptions(insecure_registries=frozenset({"reg.io"})), False, True, False),
        (TransportOptions(insecure_registries=frozenset({"other.io"})), False, False, True),
        (TransportOptions(skip_tls_verify=True), True, False, False),
        (TransportOptions(skip_tls_verify=True), False, False, True),
        (TransportOptions(skip_tls_verify_pull=True), False, False, False),
        (TransportOptions(skip_tls_verify_registries=frozenset({"reg.io"})), False, False, False),
        (TransportOptions(skip_tls_verify_registries=frozenset({"reg.io"})), True, False, False),
    ],
)
def test_flags_make_a_registry_insecure_or_unverified_in_their_direction(
        options: TransportOptions, push: bool, insecure_: bool, verified: bool) -> None:
    assert options.is_insecure("reg.io", push=push) is insecure_
    assert options.verifies_tls("reg.io", push=push) is verified


@pytest.mark.parametrize("name", ["docker.io", "index.docker.io", "registry-1.docker.io"])
def test_any_name_of_docker_hub_in_a_flag_means_docker_hub(name: str) -> None:
    options = TransportOptions(insecure_registries=frozenset({name}))
    assert options.is_insecure("docker.io", push=False)


def test_a_loopback_registry_is_not_insecure_by_itself(registry: Registry) -> None:
    with RegistryClient(TransportOptions(retries=0)) as plain, \
            pytest.raises(RegistryError) as info:
        plain.resolve(ref_in(registry, "x"), Platform())
    assert str(info.value).startswith(
        f"cannot reach registry {registry.host}: TLS handshake failed: WRONG_VERSION_NUMBER")


def test_an_insecure_registry_falls_back_to_http_once_and_remembers(
        registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    transport = Transport(insecure(registry.host))
    urls: list[str] = []
    send = transport.session.request

    def recording(method: str, url: str, **kwargs: Any) -> requests.Response:
        urls.append(url.split("/v2/")[0])
        return send(method, url, **kwargs)

    monkeypatch.setattr(transport.session, "request", recording)
    with RegistryClient(transport=transport) as client:
        for _ in range(2):
            assert not client.blob_exists(ref_in(registry, "x"), "sha256:" + "0" * 64)
    assert urls == [f"https://{registry.host}", f"http://{registry.host}",
                    f"http://{registry.host}"]


# --- errors ------------------------------------------------------------------------------------


def test_an_unknown_image_names_registry_repository_tag_and_status(
        client: RegistryClient, registry: Registry) -> None:
    with pytest.raises(RegistryError) as info:
        client.resolve(ref_in(registry, "busybox"), Platform())
    assert str(info.value) == (f"pulling manifest {registry.host}/busybox:latest: "
                               "404 Not Found (MANIFEST_UNKNOWN: manifest unknown)")


def test_an_unreachable_registry_says_so_after_retrying() -> None:
    sleeps: list[float] = []
    transport = Transport(TransportOptions(retries=2, backoff=0.5), sleep=sleeps.append)
    with RegistryClient(transport=transport) as client, pytest.raises(RegistryError) as info:
        client.resolve(ImageRef.parse("127.0.0.1:1/busybox"), Platform())
    assert str(info.value) == "cannot reach registry 127.0.0.1:1: connection refused"
    assert sleeps == [0.5, 1.0]


def test_an_untrusted_certificate_is_refused_and_not_retried(tls_registry: Registry) -> None:
    sleeps: list[float] = []
    transport = Transport(TransportOptions(), sleep=sleeps.append)
    with RegistryClient(transport=transport) as client, pytest.raises(RegistryError) as info:
        client.resolve(ref_in(tls_registry, "x"), Platform())
    assert str(info.value).startswith(
        f"cannot reach registry {tls_registry.host}: TLS certificate verification failed: ")
    assert sleeps == []


@pytest.mark.parametrize(
    "options",
    [
        lambda host: TransportOptions(skip_tls_verify_pull=True),
        lambda host: TransportOptions(skip_tls_verify_registries=frozenset({host})),
        lambda host: TransportOptions(insecure_pull=True),
    ],
    ids=["skip-tls-verify-pull", "skip-tls-verify-registry", "insecure-pull"],
)
def test_skipping_verification_reaches_a_tls_registry_over_https(
        tls_registry: Registry, options: Callable[[str], TransportOptions]) -> None:
    with RegistryClient(options(tls_registry.host)) as client:
        urls = count_requests(client.transport)
        with pytest.raises(RegistryError, match="404 Not Found"):
            client.resolve(ref_in(tls_registry, "x"), Platform())
    assert [url.split("/v2/")[0] for _, url in urls] == [f"https://{tls_registry.host}"]


# --- pull and push against the real registry ---------------------------------------------------


def test_an_image_pushed_by_the_client_is_read_by_skopeo_and_pulled_back(
        client: RegistryClient, registry: Registry, image: TinyImage, tmp_path: Path) -> None:
    ref = ref_in(registry, "kiln/pushed:v1")
    digest = push_image(client, ref, image)
    assert digest == image.manifest_digest

    raw = skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{ref}")
    assert raw.encode() == image.manifest_bytes
    info = skopeo_json("inspect", "--tls-verify=false", f"docker://{ref}")
    assert info["Digest"] == image.manifest_digest
    assert info["Layers"] == [layer.digest for layer in image.layers]

    resolved = client.resolve(ref, Platform())
    assert resolved.manifest_digest == image.manifest_digest
    assert resolved.manifest_bytes == image.manifest_bytes
    assert resolved.config_bytes == image.config_bytes
    assert resolved.config.diff_ids == [layer.diff_id for layer in image.layers]
    for descriptor, layer in zip(resolved.manifest.layers, image.layers, strict=True):
        dest = tmp_path / "pulled" / descriptor.digest
        client.fetch_blob(ref, descriptor, dest)
        assert dest.read_bytes() == layer.path.read_bytes()


def test_an_image_pushed_by_skopeo_resolves_and_its_layers_fetch(
        client: RegistryClient, registry: Registry, image: TinyImage, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    write_oci_layout(layout, image.manifest_bytes, image.config_bytes, image.layers, "v1")
    ref = ref_in(registry, "kiln/by-skopeo:v1")
    push_with_skopeo(registry, layout, "v1", ref)

    resolved = client.resolve(ref, Platform())
    assert resolved.manifest_digest == image.manifest_digest
    assert resolved.config.data["config"]["Cmd"] == ["/bin/sh"]
    for descriptor, layer in zip(resolved.manifest.layers, image.layers, strict=True):
        dest = tmp_path / "pulled" / "layer"
        client.fetch_blob(ref, descriptor, dest)
        assert dest.read_bytes() == layer.path.read_bytes()


def test_a_tag_resolves_with_exactly_one_manifest_request(
        client: RegistryClient, registry: Registry, image: TinyImage) -> None:
    ref = ref_in(registry, "kiln/counted:v1")
    push_image(client, ref, image)
    seen = count_requests(client.transport)
    client.resolve(ref, Platform())
    manifests = [(m, u) for m, u in seen if "/manifests/" in u]
    assert manifests == [("GET", f"http://{ref.api_host}/v2/kiln/counted/manifests/v1")]
    assert [m for m, u in seen if "/blobs/" in u] == ["GET"]  # the config, nothing else


def test_pulling_by_digest_checks_the_manifest(
        client: RegistryClient, registry: Registry, image: TinyImage) -> None:
    ref = ref_in(registry, "kiln/by-digest:v1")
    push_image(client, ref, image)
    pinned = ImageRef.parse(f"{registry.host}/kiln/by-digest@{image.manifest_digest}")
    assert client.resolve(pinned, Platform()).manifest_bytes == image.manifest_bytes

    # The registry stores the manifest as a blob; corrupt it the way a bad disk would.
    stored = registry_blob_file(registry, image.manifest_digest)
    original = stored.read_bytes()
    stored.write_bytes(original.replace(b'"schemaVersion": 2', b'"schemaVersion":  2'))
    try:
        with pytest.raises(RegistryError) as info:
            client.resolve(pinned, Platform())
    finally:
        stored.write_bytes(original)
    assert str(info.value).startswith(
        f"pulling manifest {pinned}: digest mismatch: the registry sent content with digest "
        "sha256:")


@pytest.fixture
def multi_platform(registry: Registry, tmp_path: Path) -> tuple[ImageRef, dict[str, TinyImage]]:
    """A two-platform image (linux/amd64, linux/arm64/v8) pushed by ``skopeo copy --all``."""
    layout = tmp_path / "layout"
    images = {
        "linux/amd64": make_image(tmp_path / "amd64", {"arch": b"amd64"},
                                  platform=Platform("linux", "amd64")),
        "linux/arm64/v8": make_image(tmp_path / "arm64", {"arch": b"arm64"},
                                     platform=Platform("linux", "arm64", "v8")),
    }
    entries = []
    for name, img in images.items():
        d = write_oci_layout(layout, img.manifest_bytes, img.config_bytes, img.layers)
        entries.append(Descriptor(d.media_type, d.digest, d.size,
                                  platform=Platform.parse(name)).to_json())
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})
    add_to_index(layout, write_blob(layout, index.encode(), OCI_INDEX), "multi")
    ref = ref_in(registry, "kiln/multi:v1")
    push_with_skopeo(registry, layout, "multi", ref, "--all")
    return ref, images


@pytest.mark.parametrize(
    ("platform", "expected"),
    [
        (Platform(), "linux/amd64"),
        (Platform("linux", "arm64"), "linux/arm64/v8"),
        (Platform("linux", "arm64", "v8"), "linux/arm64/v8"),
    ],
)
def test_an_index_resolves_to_the_requested_platform(
        client: RegistryClient, multi_platform: tuple[ImageRef, dict[str, TinyImage]],
        platform: Platform, expected: str) -> None:
    ref, images = multi_platform
    seen = count_requests(client.transport)
    resolved = client.resolve(ref, platform)
    assert resolved.manifest_digest == images[expected].manifest_digest
    assert resolved.config_bytes == images[expected].config_bytes
    assert sum("/manifests/" in url for _, url in seen) == 2  # the index, then the platform's


def test_an_index_without_the_platform_says_what_it_offers(
        client: RegistryClient, multi_platform: tuple[ImageRef, dict[str, TinyImage]]) -> None:
    ref, _ = multi_platform
    with pytest.raises(ImageError) as info:
        client.resolve(ref, Platform("linux", "s390x"))
    assert str(info.value) == (f"{ref}: no image for platform linux/s390x "
                               "(the index offers: linux/amd64, linux/arm64/v8)")


def test_a_corrupted_blob_is_refused_and_leaves_no_file(
        client: RegistryClient, registry: Registry, image: TinyImage, tmp_path: Path) -> None:
    ref = ref_in(registry, "kiln/corrupt:v1")
    push_image(client, ref, image)
    layer = image.layers[0]
    stored = registry_blob_file(registry, layer.digest)
    data = bytearray(stored.read_bytes())
    data[-1] ^= 0xFF
    stored.write_bytes(bytes(data))
    dest = tmp_path / "pulled" / "layer"
    with pytest.raises(RegistryError) as info:
        client.fetch_blob(ref, layer.descriptor(), dest)
    assert str(info.value) == (
        f"fetching blob {ref.name}@{layer.digest}: digest mismatch: received content with "
        f"digest {sha256_digest(bytes(data))}")
    assert list((tmp_path / "pulled").iterdir()) == []


def test_a_blob_longer_than_its_descriptor_is_refused(
        client: RegistryClient, registry: Registry, image: TinyImage, tmp_path: Path) -> None:
    ref = ref_in(registry, "kiln/short:v1")
    push_image(client, ref, image)
    layer = image.layers[0]
    short = Descriptor(layer.media_type, layer.digest, layer.size - 1)
    with pytest.raises(RegistryError, match=re.escape(
            f"fetching blob {ref.name}@{layer.digest}: size mismatch: expected "
            f"{layer.size - 1} bytes, received {layer.size} or more")):
        client.fetch_blob(ref, short, tmp_path / "layer")


def test_a_missing_blob_names_the_digest(client: RegistryClient, registry: Registry,
                                         tmp_path: Path) -> None:
    digest = "sha256:" + "0" * 64
    with pytest.raises(RegistryError) as info:
        client.fetch_blob(ref_in(registry, "kiln/none"), Descriptor("x", digest, 1),
                          tmp_path / "x")
    assert str(info.value) == (f"fetching blob {registry.host}/kiln/none@{digest}: "
                               "404 Not Found (BLOB_UNKNOWN: blob unknown to registry)")


def test_pushing_a_blob_that_exists_sends_only_a_head(
        client: RegistryClient, registry: Registry, image: TinyImage) -> None:
    ref = ref_in(registry, "kiln/again:v1")
    layer = image.layers[0]
    assert client.push_blob(ref, layer.descriptor(), layer.path) is True
    seen = count_requests(client.transport)
    assert client.push_blob(ref, layer.descriptor(), layer.path) is False
    assert [method for method, _ in seen] == ["HEAD"]
    assert client.blob_exists(ref, layer.digest)


def test_a_blob_pushed_from_a_file_is_the_file(
        client: RegistryClient, registry: Registry, image: TinyImage, tmp_path: Path) -> None:
    ref = ref_in(registry, "kiln/file-blob")
    layer = image.layers[1]
    client.push_blob(ref, layer.descriptor(), layer.path)
    client.fetch_blob(ref, layer.descriptor(), tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == layer.path.read_bytes()


def test_a_blob_whose_file_has_another_size_is_not_pushed(
        client: RegistryClient, registry: Registry, image: TinyImage) -> None:
    layer = image.layers[0]
    wrong = Descriptor(layer.media_type, layer.digest, layer.size + 1)
    with pytest.raises(ImageError, match=f"is {layer.size} bytes, its descriptor says"):
        client.push_blob(ref_in(registry, "kiln/wrong"), wrong, layer.path)


def test_bytes_that_are_not_the_named_blob_are_not_pushed(
        client: RegistryClient, registry: Registry, image: TinyImage) -> None:
    config = Descriptor(OCI_CONFIG, image.config_digest, len(image.config_bytes))
    with pytest.raises(ImageError, match="are not that blob"):
        client.push_blob_bytes(ref_in(registry, "kiln/wrong"), config, b"{}")


def test_a_blob_is_mounted_from_another_repository(
        client: RegistryClient, registry: Registry, image: TinyImage) -> None:
    source, target = ref_in(registry, "kiln/base"), ref_in(registry, "kiln/derived")
    layer = image.layers[0]
    client.push_blob(source, layer.descriptor(), layer.path)
    assert not client.blob_exists(target, layer.digest)
    assert client.mount_blob(target, layer.digest, source) is True
    assert client.blob_exists(target, layer.digest)


def test_a_declined_mount_returns_false(client: RegistryClient, registry: Registry,
                                        image: TinyImage) -> None:
    target = ref_in(registry, "kiln/derived2")
    assert client.mount_blob(target, image.layers[0].digest, "kiln/has-nothing") is False
    assert not client.blob_exists(target, image.layers[0].digest)


def test_a_mount_from_another_registry_is_not_attempted(client: RegistryClient,
                                                        registry: Registry) -> None:
    seen = count_requests(client.transport)
    other = ImageRef.parse("reg.example.com/kiln/base")
    assert client.mount_blob(ref_in(registry, "kiln/x"), "sha256:" + "0" * 64, other) is False
    assert seen == []


def test_push_falls_back_to_upload_when_the_mount_is_declined(
        client: RegistryClient, registry: Registry, image: TinyImage) -> None:
    target = ref_in(registry, "kiln/derived3")
    layer = image.layers[0]
    seen = count_requests(client.transport)
    assert client.push_blob(target, layer.descriptor(), layer.path,
                            mount_from="kiln/has-nothing") is True
    assert [method for method, _ in seen] == ["HEAD", "POST", "PUT"]
    assert client.blob_exists(target, layer.digest)


def test_a_manifest_naming_missing_blobs_is_refused(
        client: RegistryClient, registry: Registry, image: TinyImage) -> None:
    ref = ref_in(registry, "kiln/incomplete:v1")
    with pytest.raises(RegistryError) as info:
        client.push_manifest(ref, image.manifest_bytes, OCI_MANIFEST)
    assert str(info.value).startswith(
        f"pushing manifest {ref}: 400 Bad Request (MANIFEST_BLOB_UNKNOWN: ")
    assert registry.tags("kiln/incomplete") == []


# --- protocol corners, on a stand-in server -----------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    #: Send only this many bytes of ``body`` (with the full Content-Length), then hang up.
    cut_at: int | None = None


@dataclass
class StandIn:
    """A tiny HTTP server answering from a script: (method, path) -> replies, in order."""

    script: dict[tuple[str, str], list[Reply]]
    received: list[tuple[str, str, bytes]] = field(default_factory=list)
    port: int = 0

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
def stand_in() -> Iterator[Callable[[dict[tuple[str, str], list[Reply]]], StandIn]]:
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(script: dict[tuple[str, str], list[Reply]]) -> StandIn:
        state = StandIn(script)

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                state.received.append((self.command, self.path, body))
                replies = state.script.get((self.command, self.path.split("?")[0])) or []
                reply = replies.pop(0) if replies else Reply(404)
                self.send_response(reply.status)
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(reply.body[:reply.cut_at])
                if reply.cut_at is not None:
                    self.close_connection = True

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _answer

        server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        state.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return state

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_a_503_is_retried_after_the_time_retry_after_asks(stand_in: Any) -> None:
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [],
                       "config": {"mediaType": "x", "digest": "sha256:" + "0" * 64,
                                  "size": 2}}).encode()
    server = stand_in({
        ("GET", "/v2/app/manifests/v1"): [Reply(503, {"Retry-After": "7"}), Reply(429),
                                          Reply(200, {"Content-Type": OCI_MANIFEST}, body)],
    })
    sleeps: list[float] = []
    transport = Transport(insecure(server.host, backoff=0.25), sleep=sleeps.append)
    with RegistryClient(transport=transport) as client:
        got, _, digest = client.get_manifest(ImageRef.parse(f"{server.host}/app:v1"))
    assert (got, digest) == (body, sha256_digest(body))
    assert sleeps == [7.0, 0.5]


def test_a_5xx_that_persists_is_reported_with_its_status(stand_in: Any) -> None:
    server = stand_in({("GET", "/v2/app/manifests/v1"): [Reply(502)] * 3})
    transport = Transport(insecure(server.host, retries=2), sleep=lambda _: None)
    with RegistryClient(transport=transport) as client, pytest.raises(RegistryError) as info:
        client.resolve(ImageRef.parse(f"{server.host}/app:v1"), Platform())
    assert str(info.value) == f"pulling manifest {server.host}/app:v1: 502 Bad Gateway"


def test_an_upload_follows_a_relative_location_and_keeps_its_query(
        stand_in: Any, tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"layer bytes")
    digest = sha256_digest(b"layer bytes")
    server = stand_in({
        ("HEAD", f"/v2/app/blobs/{digest}"): [Reply(404)],
        ("POST", "/v2/app/blobs/uploads/"): [Reply(202, {"Location": "/upload/1?_state=s"})],
        ("PUT", "/upload/1"): [Reply(201)],
    })
    with RegistryClient(insecure(server.host)) as client:
        client.push_blob(ImageRef.parse(f"{server.host}/app"),
                         Descriptor("x", digest, len(b"layer bytes")), blob)
    put = [r for r in server.received if r[0] == "PUT"]
    assert put == [("PUT", f"/upload/1?_state=s&digest={digest.replace(':', '%3A')}",
                    b"layer bytes")]


def test_a_blob_download_follows_the_redirect_to_storage(stand_in: Any, tmp_path: Path) -> None:
    digest = sha256_digest(b"content")
    server = stand_in({})
    server.script.update({
        ("GET", f"/v2/app/blobs/{digest}"): [
            Reply(307, {"Location": f"http://{server.host}/storage/xyz"})],
        ("GET", "/storage/xyz"): [Reply(200, {}, b"content")],
    })
    with RegistryClient(insecure(server.host)) as client:
        client.fetch_blob(ImageRef.parse(f"{server.host}/app"), Descriptor("x", digest, 7),
                          tmp_path / "blob")
    assert (tmp_path / "blob").read_bytes() == b"content"


def test_a_download_that_breaks_off_is_started_again(stand_in: Any, tmp_path: Path) -> None:
    data = bytes(range(256)) * 64
    digest = sha256_digest(data)
    server = stand_in({("GET", f"/v2/app/blobs/{digest}"): [
        Reply(200, {}, data, cut_at=1000), Reply(200, {}, data)]})
    sleeps: list[float] = []
    transport = Transport(insecure(server.host), sleep=sleeps.append)
    with RegistryClient(transport=transport) as client:
        client.fetch_blob(ImageRef.parse(f"{server.host}/app"),
                          Descriptor("x", digest, len(data)), tmp_path / "blob")
    assert (tmp_path / "blob").read_bytes() == data
    assert sleeps == [0.5]
    assert [p.name for p in tmp_path.iterdir()] == ["blob"]


# --- a TLS registry with a certificate from a private CA ---------------------------------------


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    workdir = tmp_path_factory.mktemp("tls-registry")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(workdir / "cert.pem"))
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(str(workdir / "cert.pem"), append=True)
    cert.private_key_pem.write_to_path(str(workdir / "key.pem"))
    reg = Registry(workdir, scheme="https", tls_cert=workdir / "cert.pem",
                   tls_key=workdir / "key.pem").start()
    try:
        yield reg
    finally:
        reg.stop()
