"""What a registry or a docker config can hand kiln that is not what it should be: one line
each, naming the part that is wrong (issue 18 items 9 and 13)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import requests
import urllib3

from executor.errors import ImageError, RegistryError
from executor.image.model import OCI_MANIFEST, ImageConfig, Index, Manifest
from executor.registry.credentials import DockerConfig
from executor.registry.transport import describe_failure, format_wait, timing_from_environment

DIGEST = "sha256:" + "ab" * 32
GOOD_LAYER = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": DIGEST,
              "size": 3}


def manifest(**changes: Any) -> bytes:
    data: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                       "digest": DIGEST, "size": 2},
                            "layers": [GOOD_LAYER]}
    data.update(changes)
    return json.dumps({k: v for k, v in data.items() if v is not ...}).encode()


@pytest.mark.parametrize(("body", "message"), [
    (b"[" * 50_000 + b"]" * 50_000, "manifest is not valid JSON: nested too deeply"),
    (manifest(layers="sha256:abc"), "manifest's 'layers' is a JSON string, not a list"),
    (manifest(layers=["x"]), "layer 1's descriptor is a JSON string, not an object"),
    (manifest(layers=[GOOD_LAYER, {"digest": DIGEST, "size": 1}]),
     "layer 2's descriptor lacks the 'mediaType' field"),
    (manifest(layers=[{**GOOD_LAYER, "size": "3"}]),
     "layer 1's descriptor: 'size' must be a whole number of bytes, not '3'"),
    (manifest(layers=[{**GOOD_LAYER, "platform": "linux"}]),
     "layer 1's descriptor: 'platform' must be an object"),
    (manifest(config=...), "manifest lacks the 'config' field"),
    (manifest(config=[]), "the config descriptor is a JSON list, not an object"),
    (manifest(annotations=["a"]), "manifest's 'annotations' must be an object"),
])
def test_a_malformed_manifest_says_which_part(body: bytes, message: str) -> None:
    with pytest.raises(ImageError) as info:
        Manifest.from_bytes(body)
    assert str(info.value) == message


def test_an_index_whose_manifests_is_not_a_list_says_so() -> None:
    with pytest.raises(ImageError) as info:
        Index.from_bytes(b'{"schemaVersion": 2, "manifests": {"a": 1}}')
    assert str(info.value) == "index's 'manifests' is a JSON object, not a list"


@pytest.mark.parametrize(("config", "message"), [
    ({"history": "none"}, "image config's 'history' is a JSON string, not a list"),
    ({"rootfs": []}, "image config's 'rootfs' is a JSON list, not an object"),
    ({"rootfs": {"diff_ids": "sha256:x"}}, "image config's 'rootfs.diff_ids' must be a list "
                                           "of strings"),
    ({"config": {"Env": "A=1"}}, "image config's 'config.Env' must be a list of strings"),
    ({"config": {"Labels": ["a"]}}, "image config's 'config.Labels' must be an object"),
    ({"history": [1]}, "image config's 'history' entries must be objects"),
])
def test_a_malformed_image_config_says_which_part(config: dict[str, Any],
                                                  message: str) -> None:
    with pytest.raises(ImageError) as info:
        ImageConfig.from_bytes(json.dumps(config).encode())
    assert str(info.value) == message


def test_an_image_config_with_null_config_is_an_empty_one() -> None:
    assert ImageConfig.from_bytes(b'{"config": null}').container == {}


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: os.mkfifo(p), "not a regular file (a FIFO)"),
    (lambda p: p.mkdir(), "not a regular file (a directory)"),
    (lambda p: p.symlink_to("/dev/zero"), "not a regular file (a device)"),
    (lambda p: p.write_bytes(b'{"a":' * 5000 + b"1" + b"}" * 5000), "invalid JSON: nested too "
                                                                     "deeply"),
])
def test_a_docker_config_that_cannot_be_one_is_refused_without_blocking(
        tmp_path: Path, make: Any, message: str) -> None:
    path = tmp_path / "config.json"
    make(path)
    with pytest.raises(RegistryError) as info:
        DockerConfig.load(path)
    assert str(info.value) == f"reading registry credentials: {path}: {message}"


def test_a_missing_docker_config_is_anonymous(tmp_path: Path) -> None:
    assert DockerConfig.load(tmp_path / "config.json").auths == {}


def test_an_answer_broken_off_names_the_registry_and_what_arrived() -> None:
    broken = requests.exceptions.ChunkedEncodingError(urllib3.exceptions.ProtocolError(
        "Connection broken: IncompleteRead(10 bytes read, 90 more expected)",
        urllib3.exceptions.IncompleteRead(10, 90)))
    assert describe_failure(broken, "reg.example", "GET", "/v2/a/manifests/1?x=y") == (
        "registry reg.example broke off its answer to GET /v2/a/manifests/1: received 10 "
        "bytes, 90 more were due")


def test_a_reset_after_connecting_is_not_called_unreachable() -> None:
    reset = requests.ConnectionError(urllib3.exceptions.ProtocolError(
        "Connection aborted.", ConnectionResetError(104, "Connection reset by peer")))
    assert describe_failure(reset, "reg.example", "PUT", "http://reg.example/v2/a/blobs/"
                            "uploads/u?_state=long") == (
        "connection to registry reg.example broke during PUT /v2/a/blobs/uploads/u: "
        "connection reset by peer")


@pytest.mark.parametrize(("seconds", "text"), [(0.1, "100ms"), (1.0, "1s"), (2.5, "2.5s"),
                                               (30, "30s")])
def test_waits_are_printed_as_kaniko_prints_durations(seconds: float, text: str) -> None:
    assert format_wait(seconds) == text


def test_retry_timing_comes_from_the_environment() -> None:
    assert timing_from_environment({"KILN_REGISTRY_RETRIES": "0", "KILN_REGISTRY_BACKOFF":
                                    "0.1", "KILN_REGISTRY_TIMEOUT": "2"}) == {
        "retries": 0, "backoff": 0.1, "read_timeout": 2.0}
    with pytest.raises(RegistryError, match="KILN_REGISTRY_TIMEOUT='0': expected a number"):
        timing_from_environment({"KILN_REGISTRY_TIMEOUT": "0"})


def test_a_heartbeat_logs_while_its_block_runs_and_stops_after(
        caplog: pytest.LogCaptureFixture) -> None:
    import logging
    import time

    from executor.log import heartbeat

    caplog.set_level(logging.INFO, logger="kiln")
    with heartbeat(lambda: "Still waiting for reg.example", every=0.05):
        time.sleep(0.3)
    time.sleep(0.2)
    lines = [r.getMessage() for r in caplog.records]
    assert 3 <= len(lines) <= 7
    assert all(line.startswith("Still waiting for reg.example (") for line in lines)
