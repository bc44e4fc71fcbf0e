"""``--attest``: SLSA provenance and an SPDX SBOM attached as BuildKit attaches them (issue 16).

One multi-stage build from a git context, with both attestations, a secret, a proxy build arg
carrying a password and registry credentials in DOCKER_CONFIG; every test reads what it pushed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import requests

from tests.support.attest_schemas import SLSA_PROVENANCE_V1, STATEMENT_V1
from tests.support.context_servers import ContextServer, GitDaemon
from tests.support.go_elf import go_binary
from tests.support.kiln import run_executor_on

pytestmark = pytest.mark.e2e

SECRET = "tok-SECRET-4242-zz"
PROXY_PASSWORD = "proxypass-777"
REGISTRY_PASSWORD = "regpassw0rd-xyz"
DATA = "downloaded by ADD\n"

DOCKERFILE = """\
ARG BASE
FROM $BASE AS packages
COPY pkgs/ /pkgs/
RUN echo built > /pkgs/usr/built.txt

FROM $BASE
ARG GREETING=hi
ARG HTTP_PROXY
ARG LEAKED
ARG DATA_URL
ADD ${DATA_URL} /data.txt
COPY --from=packages /pkgs/var/ /var/
COPY --from=packages /pkgs/usr/ /usr/
RUN --mount=type=secret,id=token test -s /run/secrets/token && echo $GREETING > /greeting
CMD ["cat", "/greeting"]
"""

#: Two installed dpkg packages and one removed (config files only): the SBOM lists two.
DPKG_STATUS = """\
Package: hello
Status: install ok installed
Architecture: amd64
Version: 2.10-3

Package: libfoo1
Status: install ok installed
Architecture: amd64
Version: 1:1.2-1+b1
Description: a library
 with a continued description line

Package: oldtool
Status: deinstall ok config-files
Architecture: amd64
Version: 0.9-1
"""

PACKAGE_FILES = {
    "pkgs/var/lib/dpkg/status": DPKG_STATUS,
    "pkgs/var/lib/dpkg/info/hello.list": "/.\n/usr\n/usr/bin\n/usr/bin/hello\n",
    "pkgs/var/lib/dpkg/info/libfoo1:amd64.list": "/.\n/usr/lib/libfoo.so.1\n",
    "pkgs/usr/bin/hello": "#!/bin/sh\necho hello\n",
    "pkgs/usr/lib/libfoo.so.1": "not really a library\n",
    # pip-style: two wheels (dist-info with RECORD) and one legacy egg-info
    "pkgs/usr/lib/python3/site-packages/requests-2.31.0.dist-info/METADATA":
        "Metadata-Version: 2.1\nName: requests\nVersion: 2.31.0\n\nLong description.\n",
    "pkgs/usr/lib/python3/site-packages/requests-2.31.0.dist-info/RECORD":
        "requests/__init__.py,sha256=x,10\nrequests-2.31.0.dist-info/METADATA,,\n",
    "pkgs/usr/lib/python3/site-packages/requests/__init__.py": "# requests\n",
    "pkgs/usr/lib/python3/site-packages/Typing_Extensions-4.9.0.dist-info/METADATA":
        "Metadata-Version: 2.1\nName: Typing_Extensions\nVersion: 4.9.0\n",
    "pkgs/usr/lib/python3/site-packages/Typing_Extensions-4.9.0.dist-info/RECORD": "",
    "pkgs/usr/lib/python3/site-packages/oldpkg-1.0-py3.11.egg-info/PKG-INFO":
        "Metadata-Version: 1.0\nName: oldpkg\nVersion: 1.0\n",
    # npm-style: a package, a scoped one, and one nested in another's node_modules
    "pkgs/usr/lib/app/node_modules/left-pad/package.json":
        '{"name": "left-pad", "version": "1.3.0"}',
    "pkgs/usr/lib/app/node_modules/@scope/util/package.json":
        '{"name": "@scope/util", "version": "2.0.1"}',
    "pkgs/usr/lib/app/node_modules/left-pad/node_modules/tiny/package.json":
        '{"name": "tiny", "version": "0.0.1"}',
    # the application itself is not under node_modules: not a dependency, not listed
    "pkgs/usr/lib/app/package.json": '{"name": "app", "version": "1.0.0"}',
}


def _git(*args: str, cwd: Path) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid",
           "HOME": str(cwd), "PATH": "/usr/bin:/bin"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


def _make_repository(work: Path, served: Path) -> str:
    """``served/app.git`` holding the Dockerfile and package files; returns the commit."""
    work.mkdir(parents=True)
    (work / "Dockerfile").write_text(DOCKERFILE)
    for rel, text in PACKAGE_FILES.items():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text(text)
    go_app = work / "pkgs/usr/bin/goapp"  # a synthetic Go binary: its build info is scanned
    go_app.write_bytes(go_binary("example.com/goapp", ("example.com/goapp", "v0.4.0"),
                                 [("golang.org/x/text", "v0.14.0")]))
    go_app.chmod(0o755)
    _git("init", "-q", "-b", "main", cwd=work)
    _git("add", "-A", cwd=work)
    _git("commit", "-q", "-m", "app", cwd=work)
    commit = _git("rev-parse", "HEAD", cwd=work)
    served.mkdir(parents=True)
    _git("clone", "-q", "--bare", str(work), str(served / "app.git"), cwd=work.parent)
    return commit


class Attested:
    """What the build pushed, read back from the registry."""

    def __init__(self, registry_host: str, ref: str, layout: Path, dest: Path,
                 commit: str, stderr: str) -> None:
        self.host, self.ref, self.layout, self.dest = registry_host, ref, layout, dest
        self.commit, self.stderr = commit, stderr
        self.repo = ref.split("/", 1)[1].rsplit(":", 1)[0]
        self.index = json.loads(_skopeo_raw(f"docker://{ref}"))
        self.image_entry, self.attestation_entry = self.index["manifests"]
        self.attestation_manifest = json.loads(self._get(
            f"manifests/{self.attestation_entry['digest']}",
            "application/vnd.oci.image.manifest.v1+json"))
        self.statements: dict[str, dict[str, Any]] = {}
        config = self.attestation_manifest["config"]["digest"]
        self.raw: list[bytes] = [self._get(f"blobs/{config}")]
        for layer in self.attestation_manifest["layers"]:
            data = self._get(f"blobs/{layer['digest']}")
            self.raw.append(data)
            self.statements[layer["annotations"]["in-toto.io/predicate-type"]] = json.loads(data)

    def _get(self, path: str, accept: str = "*/*") -> bytes:
        response = requests.get(f"http://{self.host}/v2/{self.repo}/{path}",
                                headers={"Accept": accept}, timeout=30)
        response.raise_for_status()
        return response.content


def _skopeo_raw(where: str) -> bytes:
    return subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--raw", where],
                          check=True, capture_output=True, timeout=60).stdout


@pytest.fixture(scope="module")
def attested(tmp_path_factory: pytest.TempPathFactory, registry, busybox_image: str) -> Attested:
    tmp = tmp_path_factory.mktemp("attest")
    commit = _make_repository(tmp / "work", tmp / "served")
    (tmp / "token").write_text(SECRET + "\n")
    docker_config = tmp / "docker-config"
    docker_config.mkdir()
    auth = base64.b64encode(f"kiln-user:{REGISTRY_PASSWORD}".encode()).decode()
    (docker_config / "config.json").write_text(json.dumps({"auths": {registry.host:
                                                                     {"auth": auth}}}))
    ref = f"{registry.host}/attest/app:v1"
    (tmp / "files").mkdir()
    (tmp / "files/data.txt").write_text(DATA)
    with GitDaemon(tmp / "served") as daemon, ContextServer(tmp / "files") as files:
        result = run_executor_on(
            f"{daemon.url}/app.git#refs/heads/main", tmp / "root",
            "--build-arg", f"BASE={busybox_image}", "--build-arg", "GREETING=attested",
            "--build-arg", f"HTTP_PROXY=http://proxyuser:{PROXY_PASSWORD}@127.0.0.1:9/",
            "--build-arg", f"LEAKED={SECRET}",
            "--build-arg", f"DATA_URL={files.url}/files/data.txt",
            "--secret", f"id=token,src={tmp / 'token'}",
            "--attest", "type=provenance,mode=max,dest=" + str(tmp / "dest"),
            "--attest", "type=sbom,dest=" + str(tmp / "dest"),
            "--oci-layout-path", str(tmp / "layout"), "--tar-path", str(tmp / "image.tar"),
            "--destination", ref, "--insecure", "--insecure-pull",
            env={"GIT_PULL_METHOD": "git", "DOCKER_CONFIG": str(docker_config)})
    assert result.exit_code == 0, result.stderr
    return Attested(registry.host, ref, tmp / "layout", tmp / "dest", commit, result.stderr)


def test_tag_names_an_index_of_the_image_and_its_attestation_manifest(attested) -> None:
    index = attested.index
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert attested.image_entry["platform"] == {"architecture": "amd64", "os": "linux"}
    assert attested.attestation_entry["platform"] == {"architecture": "unknown",
                                                      "os": "unknown"}
    assert attested.attestation_entry["annotations"] == {
        "vnd.docker.reference.type": "attestation-manifest",
        "vnd.docker.reference.digest": attested.image_entry["digest"]}


def test_attestation_manifest_is_laid_out_as_buildkit_lays_it_out(attested) -> None:
    manifest = attested.attestation_manifest
    assert manifest["artifactType"] == "application/vnd.docker.attestation.manifest.v1+json"
    assert manifest["config"]["mediaType"] == "application/vnd.oci.empty.v1+json"
    assert manifest["subject"]["digest"] == attested.image_entry["digest"]
    assert [layer["mediaType"] for layer in manifest["layers"]] == [
        "application/vnd.in-toto+json"] * 2
    assert sorted(attested.statements) == ["https://slsa.dev/provenance/v1",
                                           "https://spdx.dev/Document"]


def test_statements_validate_against_in_toto_and_slsa_schemas(attested) -> None:
    for statement in attested.statements.values():
        jsonschema.validate(statement, STATEMENT_V1)
        assert statement["subject"][0]["digest"]["sha256"] == \
            attested.image_entry["digest"].removeprefix("sha256:")
    provenance = attested.statements["https://slsa.dev/provenance/v1"]["predicate"]
    jsonschema.validate(provenance, SLSA_PROVENANCE_V1)


def test_provenance_names_the_git_commit_base_image_and_build_args(attested, busybox_image
                                                                   ) -> None:
    predicate = attested.statements["https://slsa.dev/provenance/v1"]["predicate"]
    dependencies = predicate["buildDefinition"]["resolvedDependencies"]
    base_digest = json.loads(_skopeo_raw(f"docker://{busybox_image}"))
    assert base_digest  # the base exists; its digest is what kiln pulled:
    uris = {d["uri"]: d.get("digest") for d in dependencies}
    assert any(uri.startswith("pkg:docker/") and "test/busybox@latest" in uri for uri in uris)
    git = [d for d in dependencies if d["uri"].startswith("git://")]
    assert git and git[0]["digest"] == {"gitCommit": attested.commit}
    added = [d for d in dependencies if d["uri"].endswith("/data.txt")]
    assert added == [{"uri": added[0]["uri"],
                      "digest": {"sha256": hashlib.sha256(DATA.encode()).hexdigest()}}]
    args = predicate["buildDefinition"]["externalParameters"]["request"]["args"]
    assert args["build-arg:GREETING"] == "attested"
    assert "build-arg:HTTP_PROXY" not in args


def test_sbom_is_spdx_that_the_spdx_library_parses_and_validates(attested, tmp_path) -> None:
    from spdx_tools.spdx.parser.json import json_parser
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    path = tmp_path / "sbom.spdx.json"
    path.write_text(json.dumps(attested.statements["https://spdx.dev/Document"]["predicate"]))
    document = json_parser.parse_from_file(str(path))
    assert validate_full_spdx_document(document) == []
    assert document.creation_info.spdx_version == "SPDX-2.3"


def test_sbom_finds_every_package_the_databases_record(attested) -> None:
    predicate = attested.statements["https://spdx.dev/Document"]["predicate"]
    purls = sorted(ref["referenceLocator"] for package in predicate["packages"]
                   for ref in package.get("externalRefs", []))
    installed = DPKG_STATUS.count("Status: install ok installed")
    assert len([p for p in purls if p.startswith("pkg:deb/")]) == installed == 2
    assert [p for p in purls if not p.startswith("pkg:deb/")] == [
        "pkg:golang/example.com/goapp@v0.4.0", "pkg:golang/golang.org/x/text@v0.14.0",
        "pkg:golang/stdlib@1.22.1", "pkg:npm/%40scope/util@2.0.1", "pkg:npm/left-pad@1.3.0",
        "pkg:npm/tiny@0.0.1", "pkg:pypi/oldpkg@1.0", "pkg:pypi/requests@2.31.0",
        "pkg:pypi/typing-extensions@4.9.0"]
    assert "pkg:deb/debian/libfoo1@1%3A1.2-1%2Bb1?arch=amd64" in purls
    files = {f["fileName"] for f in predicate["files"]}
    assert {"./usr/bin/hello", "./usr/lib/libfoo.so.1", "./usr/bin/goapp",
            "./usr/lib/python3/site-packages/requests/__init__.py"} <= files


def test_no_secret_credential_or_proxy_value_in_any_attestation(attested) -> None:
    beside = attested.layout.parent / "image.tar.attestations"
    written = [*attested.raw, *(p.read_bytes() for p in attested.dest.iterdir()),
               *(p.read_bytes() for p in beside.iterdir())]
    auth = base64.b64encode(f"kiln-user:{REGISTRY_PASSWORD}".encode())
    for data in written:
        for forbidden in (SECRET.encode(), PROXY_PASSWORD.encode(), b"proxyuser",
                          REGISTRY_PASSWORD.encode(), auth):
            assert forbidden not in data


def test_attestations_are_written_to_the_oci_layout_and_dest(attested) -> None:
    assert json.loads(_skopeo_raw(f"oci:{attested.layout}:v1")) == attested.index
    assert sorted(p.name for p in attested.dest.iterdir()) == ["provenance.json",
                                                                "sbom.spdx.json"]


def test_attestations_are_written_beside_the_tarball(attested) -> None:
    """A docker-save tarball holds no index: its statements and their manifest sit beside it,
    byte for byte what was pushed, so the manifest's digests check the files."""
    beside = attested.layout.parent / "image.tar.attestations"
    assert sorted(p.name for p in beside.iterdir()) == [
        "attestation-manifest.json", "provenance.intoto.json", "sbom.intoto.json"]
    manifest = (beside / "attestation-manifest.json").read_bytes()
    assert "sha256:" + hashlib.sha256(manifest).hexdigest() == attested.attestation_entry["digest"]
    for layer in json.loads(manifest)["layers"]:
        kind = "provenance" if "slsa" in layer["annotations"]["in-toto.io/predicate-type"] \
            else "sbom"
        data = (beside / f"{kind}.intoto.json").read_bytes()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == layer["digest"]


def test_containerd_pulls_and_runs_the_attested_image(attested, containerd) -> None:
    assert containerd.pull_and_run(attested.ref).stdout == "attested\n"


def test_sbom_recall_on_a_debootstrap_base(tmp_path, registry, debian_image) -> None:
    """Every dpkg package debootstrap installed and every Python/Node package added is in the
    SBOM, counted against the databases in the built root; the scan's time is logged."""
    from tests.support.kiln import run_executor, write_context

    files = {rel.removeprefix("pkgs/"): text for rel, text in PACKAGE_FILES.items()
             if "/python3/" in rel or "/node_modules/" in rel}
    context = write_context(tmp_path / "ctx", f"FROM {debian_image}\nCOPY usr/ /usr/\n", files)
    dest = tmp_path / "dest"
    result = run_executor(context, tmp_path / "root", "--no-push", "--oci-layout-path",
                          str(tmp_path / "layout"), "--attest", f"type=sbom,dest={dest}",
                          "--insecure-pull")
    assert result.exit_code == 0, result.stderr
    status = (tmp_path / "root/var/lib/dpkg/status").read_text()
    installed = sum(1 for stanza in status.split("\n\n")
                    if "\nStatus: install ok installed" in "\n" + stanza)
    predicate = json.loads((dest / "sbom.spdx.json").read_text())["predicate"]
    purls = [ref["referenceLocator"] for package in predicate["packages"]
             for ref in package.get("externalRefs", [])]
    assert installed > 80  # debootstrap minbase
    assert len([p for p in purls if p.startswith("pkg:deb/debian/")]) == installed
    assert len([p for p in purls if p.startswith("pkg:pypi/")]) == 3
    assert len([p for p in purls if p.startswith("pkg:npm/")]) == 3
    scan = [line for line in result.stderr.splitlines() if "SBOM" in line]
    print("\n" + "\n".join(scan))


def test_reproducible_builds_attach_the_same_attestations(tmp_path, registry,
                                                          busybox_image) -> None:
    """With --reproducible the times are pinned and the SBOM's namespace is derived from its
    content: two builds name the same index."""
    from tests.support.kiln import run_executor, write_context

    files = {rel.removeprefix("pkgs/"): text for rel, text in PACKAGE_FILES.items()}
    context = write_context(tmp_path / "ctx", f"FROM {busybox_image}\nCOPY var/ /var/\n"
                            "COPY usr/ /usr/\nRUN echo hi > /hi\n", files)
    digests = []
    for n in range(2):
        result = run_executor(context, tmp_path / f"root{n}", "--no-push", "--reproducible",
                              "--insecure-pull", "--attest", "type=provenance,mode=max",
                              "--attest", "type=sbom", "--oci-layout-path",
                              str(tmp_path / f"layout{n}"), "--digest-file",
                              str(tmp_path / f"digest{n}"))
        assert result.exit_code == 0, result.stderr
        digests.append((tmp_path / f"digest{n}").read_text())
    assert digests[0] == digests[1]
    index = json.loads(_skopeo_raw(f"oci:{tmp_path / 'layout0'}"))
    assert index["manifests"][1]["platform"] == {"architecture": "unknown", "os": "unknown"}


def test_a_bad_attest_flag_is_one_line_before_building(tmp_path) -> None:
    from tests.support.kiln import run_executor, write_context

    context = write_context(tmp_path / "ctx", "FROM scratch\n")
    result = run_executor(context, tmp_path / "root", "--no-push", "--attest",
                          "type=provenance,mode=full")
    assert result.exit_code != 0
    assert result.last_line.endswith("--attest 'type=provenance,mode=full': mode must be min "
                                     "or max")
    assert "Traceback" not in result.stderr


def test_unwritable_tarball_attestations_fail_the_build_before_any_push(tmp_path, registry,
                                                                        busybox_image) -> None:
    """The directory beside --tar-path is a local output, checked before building and written
    before the push: a path that cannot take it fails in one line and the tag never appears."""
    from tests.support.kiln import run_executor, write_context

    context = write_context(tmp_path / "ctx", f"FROM {busybox_image}\nRUN echo hi > /hi\n")
    (tmp_path / "image.tar.attestations").write_text("a file where the directory goes\n")
    ref = f"{registry.host}/attest/blocked:v1"
    result = run_executor(context, tmp_path / "root", "--insecure", "--insecure-pull",
                          "--attest", "type=provenance", "--tar-path", str(tmp_path / "image.tar"),
                          "--destination", ref)
    assert result.exit_code != 0
    assert "--tar-path" in result.last_line and "image.tar.attestations" in result.last_line
    assert result.last_line.endswith("image.tar.attestations (where its attestations go) is "
                                     "not a directory")
    assert "Traceback" not in result.stderr
    response = requests.get(f"http://{registry.host}/v2/attest/blocked/manifests/v1", timeout=30,
                            headers={"Accept": "application/vnd.oci.image.index.v1+json"})
    assert response.status_code == 404
    assert [p.name for p in tmp_path.iterdir() if p.name.lstrip(".").startswith("image")] == [
        "image.tar.attestations"]
