"""FROM --platform picks from an index; predefined ARGs (platform and proxy ones); parser
directives; the unused build-arg warning."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from tests.support.built import build
from tests.support.images import (
    MEDIA_TYPE_MANIFEST,
    REF_NAME_ANNOTATION,
    TarEntry,
    write_oci_layout_from_layers,
)
from tests.support.registry import Registry

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def multi_platform_image(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An index of two one-file images, linux/amd64 and linux/arm64: /platform.txt says which."""
    layout = tmp_path_factory.mktemp("multi") / "layout"
    manifests = []
    for arch in ("amd64", "arm64"):
        digest = write_oci_layout_from_layers(
            layout, arch, [[TarEntry.file("platform.txt", arch.encode())]], {},
            architecture=arch)
        blob = layout / "blobs/sha256" / digest.split(":", 1)[1]
        manifests.append({"mediaType": MEDIA_TYPE_MANIFEST, "digest": digest,
                          "size": blob.stat().st_size,
                          "platform": {"architecture": arch, "os": "linux"}})
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": manifests}).encode()
    index_digest = hashlib.sha256(index).hexdigest()
    (layout / "blobs/sha256" / index_digest).write_bytes(index)
    top = json.loads((layout / "index.json").read_text())
    top["manifests"].append({"mediaType": "application/vnd.oci.image.index.v1+json",
                             "digest": f"sha256:{index_digest}", "size": len(index),
                             "annotations": {REF_NAME_ANNOTATION: "multi"}})
    (layout / "index.json").write_text(json.dumps(top))
    ref = f"{registry.host}/test/multi:latest"
    subprocess.run(["skopeo", "copy", "--quiet", "--all", "--dest-tls-verify=false",
                    f"oci:{layout}:multi", f"docker://{ref}"], check=True, capture_output=True)
    return ref


def test_from_platform_picks_that_platform_from_an_index(tmp_path: Path,
                                                         multi_platform_image: str) -> None:
    built = build(tmp_path, f"FROM --platform=linux/arm64 {multi_platform_image}\n"
                  "LABEL picked=yes\n")
    assert built.ok, built.run.stderr
    assert (built.root / "platform.txt").read_text() == "arm64"
    assert built.config["architecture"] == "arm64"


def test_from_platform_may_use_a_predefined_arg(tmp_path: Path,
                                                multi_platform_image: str) -> None:
    built = build(tmp_path, f"FROM --platform=$TARGETPLATFORM {multi_platform_image}\n",
                  None, "--custom-platform", "linux/arm64")
    assert built.ok, built.run.stderr
    assert (built.root / "platform.txt").read_text() == "arm64"


def test_platform_args_reach_a_stage_that_declares_them(tmp_path: Path,
                                                        busybox_image: str) -> None:
    built = build(tmp_path, f"FROM {busybox_image}\nARG TARGETPLATFORM\nARG TARGETARCH\n"
                  "ARG BUILDOS\nRUN echo \"$TARGETPLATFORM $TARGETARCH $BUILDOS\" > /args\n"
                  "RUN echo \"[$TARGETOS]\" > /undeclared\n")
    assert built.ok, built.run.stderr
    assert (built.root / "args").read_text() == "linux/amd64 amd64 linux\n"
    assert (built.root / "undeclared").read_text() == "[]\n"


def test_a_stage_built_from_a_stage_keeps_its_args(tmp_path: Path, busybox_image: str) -> None:
    built = build(tmp_path, f"FROM {busybox_image} AS one\nARG ONE=1\nFROM {busybox_image}\n"
                  "FROM one\nRUN echo \"[$ONE]\" > /inherited\n")
    assert built.ok, built.run.stderr
    assert (built.root / "inherited").read_text() == "[1]\n"


def test_scratch_images_get_the_default_path(tmp_path: Path) -> None:
    built = build(tmp_path, "FROM scratch\nLABEL a=b\n")
    assert built.ok, built.run.stderr
    assert built.config["config"]["Env"] == [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]


def test_proxy_build_args_reach_run_without_arg_and_stay_out_of_history(
        tmp_path: Path, busybox_image: str) -> None:
    built = build(tmp_path, f"FROM {busybox_image}\nARG VISIBLE\n"
                  "RUN echo \"$HTTP_PROXY $no_proxy $VISIBLE\" > /proxy\n",
                  None, "--build-arg", "HTTP_PROXY=http://proxy.example:3128",
                  "--build-arg", "no_proxy=localhost", "--build-arg", "VISIBLE=v")
    assert built.ok, built.run.stderr
    assert (built.root / "proxy").read_text() == "http://proxy.example:3128 localhost v\n"
    run_history = [h for h in built.history() if h.startswith("RUN")]
    assert run_history == ['RUN |1 VISIBLE=v /bin/sh -c echo "$HTTP_PROXY $no_proxy $VISIBLE" '
                           '> /proxy # buildkit']
    assert "proxy.example" not in json.dumps(built.config)
    assert "One or more build-args" not in built.run.stderr


def test_unused_build_args_are_warned_about_like_docker(tmp_path: Path,
                                                        busybox_image: str) -> None:
    built = build(tmp_path, f"ARG USED_GLOBAL\nFROM {busybox_image}\nARG USED\n",
                  None, "--build-arg", "USED=1", "--build-arg", "USED_GLOBAL=1",
                  "--build-arg", "ZED=1", "--build-arg", "ALPHA=2")
    assert built.ok, built.run.stderr
    warnings = [line for line in built.run.stderr.splitlines() if "build-args" in line]
    assert len(warnings) == 1
    assert warnings[0].endswith("[Warning] One or more build-args [ALPHA ZED] were not consumed")


def test_escape_directive_makes_backtick_the_escape(tmp_path: Path, busybox_image: str) -> None:
    built = build(tmp_path, f"# escape=`\nFROM {busybox_image}\nRUN echo one `\n    two > /e\n"
                  "COPY a.txt C:\\not-a-windows-path\\\n", {"a.txt": "a\n"})
    assert built.ok, built.run.stderr
    assert (built.root / "e").read_text() == "one two\n"
    assert (built.root / "C:\\not-a-windows-path\\").is_file()


def test_syntax_directive_is_warned_about_and_ignored(tmp_path: Path,
                                                      busybox_image: str) -> None:
    built = build(tmp_path, f"# syntax=docker/dockerfile:1\nFROM {busybox_image}\n")
    assert built.ok, built.run.stderr
    assert "Dockerfile:1: ignoring the syntax directive 'docker/dockerfile:1'" in built.run.stderr


@pytest.mark.parametrize(("dockerfile", "message"), [
    ("FROM {base}\nCOPY --from=nosuchstage /x /y\n",
     "Dockerfile:2: COPY --from=nosuchstage: no stage of that name, and pulling it as an image "
     "failed: "),
    ("FROM --platform=linux/s390x {multi}\n", None),
    ("FROM {base} AS a\nFROM a AS b\nFROM --bogus=1 b\n", "Dockerfile:3: unknown flag: --bogus "
     "for FROM"),
    ("# escape=x\nFROM {base}\n", "Dockerfile:1: invalid escape token 'x' does not match ` or \\"),
    ("FROM --platform=not/a/real/platform {base}\n",
     "Dockerfile:1: invalid platform 'not/a/real/platform': expected os/arch[/variant]"),
    ("FROM {base}\nONBUILD ONBUILD RUN true\n",
     "Dockerfile:2: Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"),
    ("FROM {base}\nEXPOSE 80/foo\n", "Dockerfile:2: invalid proto: foo"),
    ("FROM {base}\nSTOPSIGNAL NOTASIGNAL\n", "Dockerfile:2: invalid signal: NOTASIGNAL"),
])
def test_bad_stage_references_and_platforms(tmp_path: Path, busybox_image: str,
                                            multi_platform_image: str, dockerfile: str,
                                            message: str | None) -> None:
    built = build(tmp_path, dockerfile.format(base=busybox_image, multi=multi_platform_image))
    assert built.run.exit_code == 1
    assert "Traceback" not in built.run.stderr
    if message is not None:
        assert built.run.last_line.startswith(f"error building image: {message}")
    else:
        assert built.run.last_line.startswith("error building image: ")
        assert "s390x" in built.run.last_line
