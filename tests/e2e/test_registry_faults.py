"""Faults between kiln and its registry, and stop signals at each phase of a build (issue 18).

Everything is real: the CNCF registry, a fault-injecting proxy in front of it
(``tests/support/fault_proxy.py``), the executor command, skopeo to read back what was pushed.
Each case states the exit code and the last line, that no traceback was printed, that no tag
points at an image the registry cannot serve, and that the same build run again succeeds.
Timeouts and backoff are shortened through ``KILN_REGISTRY_*`` so each case takes seconds.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from executor.image.model import OCI_LAYER, OCI_MANIFEST, Descriptor, sha256_digest
from executor.image.reference import ImageRef
from executor.registry.client import Cancellation, DownloadCancelled, RegistryClient
from executor.registry.transport import Transport, TransportOptions
from executor.workspace import remove_stale_partials
from tests.support.fault_proxy import Fault, FaultProxy
from tests.support.kiln import ExecutorRun, run_spawning, write_context
from tests.support.registry import Registry
from tests.support.runtime import require_tool

pytestmark = pytest.mark.e2e

#: Short timeouts and backoff: a stalled read is given up after 2 s, retries wait 100 ms.
FAST = {"KILN_REGISTRY_RETRIES": "2", "KILN_REGISTRY_BACKOFF": "0.1",
        "KILN_REGISTRY_TIMEOUT": "2"}
#: The longest a build may take to exit after SIGTERM, in any phase (the kubelet waits 30 s;
#: kiln aims at well under 2 s, the bound leaves room for a loaded 2-core CI machine).
SIGTERM_BOUND_S = 3.0

_WARN = re.compile(r"^WARN\[\d{4}\] ")


@pytest.fixture
def proxy(registry: Registry) -> Iterator[FaultProxy]:
    with FaultProxy(registry.url) as fault_proxy:
        yield fault_proxy


def layer_digest(registry: Registry, repository: str, tag: str) -> str:
    """The digest of the single layer of ``repository:tag``, read from the registry."""
    answer = requests.get(f"{registry.url}/v2/{repository}/manifests/{tag}", timeout=10,
                          headers={"Accept": OCI_MANIFEST})
    answer.raise_for_status()
    layers = answer.json()["layers"]
    assert len(layers) == 1
    return str(layers[0]["digest"])


def assert_complete(ref: str, tmp_path: Path) -> None:
    """The registry serves ``ref`` and every blob it names (skopeo copies them, verified)."""
    require_tool("skopeo", "skopeo")
    out = tmp_path / f"copy-{uuid.uuid4().hex[:8]}"
    proc = subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                           f"docker://{ref}", f"oci:{out}:x"], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr


def assert_no_tag(registry: Registry, ref: str) -> None:
    assert registry.tags(ImageRef.parse(ref).repository) == []


@dataclass
class Build:
    """One build through the proxy: its context, root and kiln dir are kept between runs."""

    tmp_path: Path
    proxy: FaultProxy
    dockerfile: str
    repository: str = field(default_factory=lambda: f"faults/{uuid.uuid4().hex[:10]}")

    def __post_init__(self) -> None:
        self.context = write_context(self.tmp_path / "context", self.dockerfile)
        self.root = self.tmp_path / "root"
        self.runs = 0
        self.kiln_dir = self.tmp_path / "kiln"

    @property
    def destination(self) -> str:
        return f"{self.proxy.host}/{self.repository}:1"

    def command(self, *args: str) -> list[str]:
        """The executor command of the next run: same kiln dir, a new root (kiln refuses a
        root that is not empty, and a stopped build leaves its root as it was)."""
        self.runs += 1
        if self.runs > 1:
            self.root = self.tmp_path / f"root{self.runs}"
        return [sys.executable, "-m", "executor.cli", "--context", str(self.context),
                "--dockerfile", str(self.context / "Dockerfile"), "--root", str(self.root),
                "--kaniko-dir", str(self.kiln_dir), "--destination", self.destination,
                "--insecure", "--insecure-pull", *args]

    def run(self, *args: str, env: dict[str, str] | None = None,
            timeout: float = 120) -> ExecutorRun:
        proc = run_spawning(self.command(*args), capture_output=True, text=True, timeout=timeout,
                            check=False, env={**os.environ, **FAST, **(env or {})},
                            stdin=subprocess.DEVNULL)
        return ExecutorRun(proc.returncode, proc.stdout, proc.stderr)

    def rerun_succeeds(self, registry: Registry, *args: str) -> ExecutorRun:
        """The same build, faults gone, in the same kiln dir."""
        for fault in self.proxy.faults:
            fault.times = 0
        again = self.run(*args)
        assert again.exit_code == 0, again.stderr
        assert unfinished_files(self.kiln_dir) == []
        assert_complete(f"{registry.host}/{self.repository}:1", self.tmp_path)
        return again


def unfinished_files(kiln_dir: Path) -> list[Path]:
    """Half-written downloads and layers in the kiln dir."""
    return [*kiln_dir.rglob("*.partial"), *kiln_dir.rglob(".layer-*.tmp")]


def busybox_via(proxy: FaultProxy) -> str:
    return f"FROM {proxy.host}/test/busybox:latest\n"


# --- the registry client: a broken upload ------------------------------------------------------


def test_a_reset_mid_upload_opens_a_new_upload_session(
        proxy: FaultProxy, tmp_path: Path) -> None:
    proxy.add(Fault("PUT", r"/blobs/uploads/", action="reset_request"))
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(256 << 10))
    descriptor = Descriptor(OCI_LAYER, sha256_digest(blob.read_bytes()), blob.stat().st_size)
    ref = ImageRef.parse(f"{proxy.host}/faults/upload-reset:1")
    transport = Transport(TransportOptions(insecure_registries=frozenset({proxy.host}),
                                           backoff=0.01))
    with RegistryClient(transport=transport) as client:
        assert client.push_blob(ref, descriptor, blob)
    uploads = [(method, status) for method, path, status in proxy.seen
               if "/blobs/" in path and method in ("POST", "PUT")]
    # The retry is a new session (a second POST), never a PUT to the broken one.
    assert uploads == [("POST", 202), ("PUT", "reset_request"), ("POST", 202), ("PUT", 201)]


def test_a_stale_partial_download_is_removed_but_a_live_one_is_kept(tmp_path: Path) -> None:
    import fcntl

    stale = tmp_path / ".abc.1.partial"
    stale.write_bytes(b"half")
    live = tmp_path / ".abc.2.partial"
    live.write_bytes(b"half")
    blob = tmp_path / "abc"
    blob.write_bytes(b"whole")
    with open(live, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        assert remove_stale_partials(tmp_path, ("*.partial",)) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".abc.2.partial", "abc"]


def test_a_cancelled_download_ends_at_once_even_in_a_stalled_read(
        proxy: FaultProxy, registry: Registry, busybox_image: str, tmp_path: Path) -> None:
    layer = layer_digest(registry, "test/busybox", "latest")
    proxy.add(Fault("GET", layer, action="stall", stall=60))
    ref = ImageRef.parse(f"{proxy.host}/test/busybox:latest")
    transport = Transport(TransportOptions(insecure_registries=frozenset({proxy.host}),
                                           read_timeout=60))
    cancel = Cancellation()
    outcome: list[BaseException | None] = []
    size = int(requests.head(f"{registry.url}/v2/test/busybox/blobs/{layer}",
                             timeout=10).headers["Content-Length"])

    def download() -> None:
        try:
            client.fetch_blob(ref, Descriptor(OCI_LAYER, layer, size), tmp_path / "blob",
                              cancel=cancel)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    with RegistryClient(transport=transport) as client:
        worker = threading.Thread(target=download)
        worker.start()
        deadline = time.monotonic() + 30
        while not any(status == "stall" for _, _, status in proxy.seen):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.2)  # the worker is blocked reading the rest of the body now
        started = time.monotonic()
        cancel.cancel()
        worker.join(timeout=10)
        took = time.monotonic() - started
    assert not worker.is_alive()
    assert took < 1, took
    assert len(outcome) == 1 and isinstance(outcome[0], DownloadCancelled)
    assert list(tmp_path.iterdir()) == []  # neither the blob nor a .partial


# --- the executor against a faulty registry ----------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A fault, and what the build must do with it: succeed after retries (``warning`` is a
    WARN line it logs) or fail with ``last_line``."""

    name: str
    fault: Fault
    warning: str = ""
    last_line: str = ""


LAYER = "LAYER"  # replaced by the base layer's digest in a fault's path

RECOVERED = [
    Case("reset mid-upload", Fault("PUT", r"/blobs/uploads/", action="reset_request"),
         warning=r"Retrying upload of blob sha256:\w{64} to {proxy} in a new upload session "
                 r"after 100ms due to .+ \(retry 1 of 2\)"),
    Case("reset mid-download", Fault("GET", LAYER, action="reset_response"),
         warning=r"Retrying download of blob sha256:\w{64} from {proxy} after 100ms due to "
                 r".+ \(retry 1 of 2\)"),
    Case("503 on the manifest push", Fault("PUT", r"/manifests/", 503),
         warning=r"Retrying PUT /v2/{repo}/manifests/1 on {proxy} after 100ms due to 503 "
                 r"Service Unavailable \(retry 1 of 2\)"),
    Case("429 with Retry-After", Fault("GET", r"/manifests/latest", 429, {"Retry-After": "1"}),
         warning=r"Retrying GET /v2/test/busybox/manifests/latest on {proxy} after 1s due to "
                 r"429 Too Many Requests \(retry 1 of 2\)"),
    Case("a stalled download", Fault("GET", LAYER, action="stall", stall=30),
         warning=r"Retrying download of blob sha256:\w{64} from {proxy} after 100ms due to "
                 r"timed out \(retry 1 of 2\)"),
]


def test_a_stalled_registry_is_never_silent(proxy: FaultProxy, registry: Registry,
                                            busybox_image: str, tmp_path: Path) -> None:
    """While a read waits out its timeout, "still waiting" lines keep the log going."""
    proxy.add(Fault("GET", r"/manifests/latest", action="hang", stall=30))
    proxy.add(Fault("GET", layer_digest(registry, "test/busybox", "latest"), action="stall",
                    stall=30))
    build = Build(tmp_path, proxy, busybox_via(proxy) + "RUN true\n")
    result = build.run(env={"KILN_REGISTRY_TIMEOUT": "4"})
    assert result.exit_code == 0, result.stderr
    host = re.escape(proxy.host)
    assert re.search(rf"^INFO\[\d{{4}}\] Still waiting for registry {host} to answer GET "
                     r"/v2/test/busybox/manifests/latest \(\d+s so far\)$", result.stderr,
                     re.MULTILINE), result.stderr
    assert re.search(rf"^INFO\[\d{{4}}\] Still downloading blob sha256:\w{{64}} from {host}: "
                     r"[\d.]+ of [\d.]+ MB at [\d.]+ MB/s \(\d+s so far\)$", result.stderr,
                     re.MULTILINE), result.stderr
    # No gap between two lines of the log is longer than a heartbeat and a bit.
    stamps = [int(m) for m in re.findall(r"^[A-Z]{4}\[(\d{4})\]", result.stderr, re.MULTILINE)]
    assert max(b - a for a, b in itertools.pairwise(stamps)) <= 2


FAILED = [
    Case("a truncated blob", Fault("GET", LAYER, action="truncate"),
         last_line=r"fetching blob {proxy}/test/busybox@sha256:\w{64}: size mismatch: expected "
                   r"\d+ bytes, received \d+"),
    Case("a blob with the wrong digest", Fault("GET", LAYER, action="corrupt"),
         last_line=r"fetching blob {proxy}/test/busybox@sha256:\w{64}: digest mismatch: "
                   r"received content with digest sha256:\w{64}"),
    Case("the manifest answer broken off, every time",
         Fault("GET", r"/manifests/latest", action="close_response", times=99),
         last_line=r"registry {proxy} broke off its answer to GET "
                   r"/v2/test/busybox/manifests/latest: received \d+ bytes, \d+ more were due"),
    Case("every upload reset",
         Fault("PUT", r"/blobs/uploads/", action="reset_request", times=99),
         last_line=r"pushing blob {proxy}/{repo}@sha256:\w{64}: connection to registry {proxy} "
                   r"broke during PUT /v2/{repo}/blobs/uploads/[\w-]+: .+"),
    Case("a 500 on every manifest push", Fault("PUT", r"/manifests/", 500, times=99),
         last_line=r"pushing manifest {proxy}/{repo}:1: 500 Internal Server Error"),
    Case("a 404 whose error body nests too deeply",
         Fault("GET", r"/manifests/latest", 404, {"Content-Type": "application/json"},
               times=99, body=b'{"errors":' + b"[" * 5000 + b"]" * 5000 + b"}"),
         last_line=r"pulling manifest {proxy}/test/busybox:latest: 404 Not Found"),
]


def _pattern(template: str, proxy: FaultProxy, repository: str) -> re.Pattern[str]:
    return re.compile(template.replace("{proxy}", re.escape(proxy.host))
                      .replace("{repo}", re.escape(repository)))


def _arm(case: Case, proxy: FaultProxy, registry: Registry) -> None:
    fault = case.fault
    path = fault.path.replace(LAYER, layer_digest(registry, "test/busybox", "latest"))
    proxy.add(Fault(fault.method, path, fault.status, dict(fault.headers), fault.times,
                    fault.body, fault.action, fault.stall))


@pytest.mark.parametrize("case", RECOVERED, ids=[c.name for c in RECOVERED])
def test_a_passing_fault_is_retried_with_a_warning_and_the_push_is_whole(
        case: Case, proxy: FaultProxy, registry: Registry, busybox_image: str,
        tmp_path: Path) -> None:
    build = Build(tmp_path, proxy, busybox_via(proxy) + "RUN echo hi > /hi\n")
    _arm(case, proxy, registry)
    started = time.monotonic()
    result = build.run()
    assert result.exit_code == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert proxy.faults_left() == 0
    warnings = [line for line in result.stderr.splitlines() if _WARN.match(line)]
    wanted = _pattern(case.warning, proxy, build.repository)
    assert any(wanted.search(line) for line in warnings), result.stderr
    assert time.monotonic() - started < 30
    assert_complete(f"{registry.host}/{build.repository}:1", tmp_path)
    build.rerun_succeeds(registry)


@pytest.mark.parametrize("case", FAILED, ids=[c.name for c in FAILED])
def test_a_lasting_fault_fails_in_one_line_and_pushes_nothing(
        case: Case, proxy: FaultProxy, registry: Registry, busybox_image: str,
        tmp_path: Path) -> None:
    build = Build(tmp_path, proxy, busybox_via(proxy) + "RUN echo hi > /hi\n")
    _arm(case, proxy, registry)
    result = build.run()
    assert result.exit_code == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.last_line.startswith("error building image: "), result.stderr
    wanted = _pattern(case.last_line, proxy, build.repository)
    assert wanted.fullmatch(result.last_line.removeprefix("error building image: ")), \
        result.last_line
    assert_no_tag(registry, build.destination)
    assert unfinished_files(build.kiln_dir) == []
    build.rerun_succeeds(registry)


# --- stop signals at each phase ----------------------------------------------------------------


@dataclass
class Running:
    """An executor started in the background, its output collected line by line."""

    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, ready: Callable[[], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.proc.kill()
        self._reader.join(timeout=10)
        raise AssertionError("the build never reached the phase:\n" + "\n".join(self.lines))

    def output(self) -> str:
        self._reader.join(timeout=10)
        return "\n".join(self.lines)


def _processes_in(root: Path, kiln_dir: Path) -> list[int]:
    """Processes left of a build: kiln's (its command line names the root) and the RUN's
    (chrooted into the root)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            chroot = os.readlink(f"/proc/{name}/root")
        except OSError:
            continue
        if str(root) in cmdline or str(kiln_dir) in cmdline or chroot == str(root):
            found.append(int(name))
    return found


PHASES = ("pull", "run", "snapshot", "push")
_MARK = "phase-run-started"


def _phase_build(phase: str, tmp_path: Path, proxy: FaultProxy, registry: Registry) -> Build:
    steps = {
        "pull": "RUN true\n",
        "run": f"ARG PAUSE=60\nRUN echo {_MARK}; sleep $PAUSE\n",
        # A layer of 80 MB that does not compress keeps kiln busy writing it for a while.
        "snapshot": "RUN head -c 80000000 /dev/urandom > /big\n",
        "push": "RUN echo hi > /hi\n",
    }
    build = Build(tmp_path, proxy, busybox_via(proxy) + steps[phase])
    # Never answering an upload: nothing can be pushed before the signal, whatever the timing.
    proxy.add(Fault("PUT", r"/blobs/uploads/", action="hang", stall=60))
    if phase == "pull":
        proxy.add(Fault("GET", layer_digest(registry, "test/busybox", "latest"),
                        action="stall", stall=60))
    return build


def _reached(phase: str, build: Build, running: Running, proxy: FaultProxy) -> bool:
    if phase == "pull":
        return any(status == "stall" for _, _, status in proxy.seen)
    if phase == "run":
        return any(line == _MARK for line in running.lines)
    if phase == "snapshot":  # the layer is being written
        return any((build.kiln_dir / "blobs").glob(".layer-*.tmp"))
    return any(status == "hang" for _, _, status in proxy.seen)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
@pytest.mark.parametrize("phase", PHASES)
def test_a_stop_signal_ends_the_build_promptly_and_a_rerun_succeeds(
        phase: str, signum: signal.Signals, proxy: FaultProxy, registry: Registry,
        busybox_image: str, tmp_path: Path, record_property: Callable[[str, object], None],
        request: pytest.FixtureRequest) -> None:
    # After a SIGKILL nothing in kiln runs: the RUN's processes end with kiln through the
    # keeper set up before the command (executor/lifetime.py).
    build = _phase_build(phase, tmp_path, proxy, registry)
    # Long timeouts: only the signal may end the stalled request.
    env = {**os.environ, **FAST, "KILN_REGISTRY_TIMEOUT": "60"}
    running = Running(subprocess.Popen(build.command(), stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       text=True, env=env))
    try:
        running.wait_for(lambda: _reached(phase, build, running, proxy))
        if phase in ("run", "push"):
            time.sleep(0.3)  # well inside the phase
        sent = time.monotonic()
        running.proc.send_signal(signum)
        code = running.proc.wait(timeout=30)
        elapsed = time.monotonic() - sent
        output = running.output()
        record_property("seconds_to_exit", round(elapsed, 3))
        print(f"{phase} {signum.name}: exited {code} after {elapsed:.3f}s")
        assert "Traceback" not in output
        if signum == signal.SIGTERM:
            assert code == 128 + signal.SIGTERM, output
            assert running.lines[-1] == "error building image: build interrupted by SIGTERM"
            assert elapsed < SIGTERM_BOUND_S, output
        else:
            assert code == -signal.SIGKILL
        time.sleep(0.2)
        left = _processes_in(build.root, build.kiln_dir)
        assert left == [], f"processes left after {signum.name} at {phase}: {left}"
        assert_no_tag(registry, build.destination)
    finally:
        if running.proc.poll() is None:
            running.proc.kill()
        for pid in _processes_in(build.root, build.kiln_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    # A SIGKILL mid-download or mid-layer leaves the half-written file; the next build in the
    # same kiln dir removes it (and a SIGTERM's own cleanup may already have).
    # (Whether the kill lands while a file is half-written is a race on a loaded machine, so
    # only what the next build does with such a file is asserted.)
    left_behind = unfinished_files(build.kiln_dir)
    again = build.rerun_succeeds(registry, "--build-arg", "PAUSE=0")
    if left_behind:
        assert f"Removed {len(left_behind)} unfinished file(s)" in again.stderr


# --- what a registry serves: hostile manifests and configs, layers that lie ---------------------


def _serve(proxy: FaultProxy, path: str, body: bytes, content_type: str = OCI_MANIFEST) -> None:
    """Have the proxy answer every GET of ``path`` with ``body``."""
    proxy.add(Fault("GET", re.escape(path) + "$", 200, {"Content-Type": content_type},
                    times=99, body=body))


def _busybox_documents(registry: Registry) -> tuple[dict[str, Any], dict[str, Any]]:
    manifest = requests.get(f"{registry.url}/v2/test/busybox/manifests/latest", timeout=10,
                            headers={"Accept": OCI_MANIFEST}).json()
    config = requests.get(f"{registry.url}/v2/test/busybox/blobs/"
                          f"{manifest['config']['digest']}", timeout=10).json()
    return manifest, config


def _nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def _manifest_case(name: str, registry: Registry) -> tuple[bytes, str]:
    """A hostile manifest body, and the end of the line kiln must print for it."""
    manifest, _ = _busybox_documents(registry)
    if name == "nested":
        return _nested(100_000), "manifest is not valid JSON: nested too deeply"
    if name == "layers-string":
        manifest["layers"] = "sha256:abc"
        return (json.dumps(manifest).encode(),
                "manifest's 'layers' is a JSON string, not a list")
    del manifest["layers"][0]["mediaType"]
    return json.dumps(manifest).encode(), "layer 1's descriptor lacks the 'mediaType' field"


@pytest.mark.parametrize("name", ["nested", "layers-string", "descriptor-without-mediaType"])
def test_a_malformed_manifest_is_one_line_naming_registry_image_and_digest(
        name: str, proxy: FaultProxy, registry: Registry, busybox_image: str,
        tmp_path: Path) -> None:
    body, why = _manifest_case(name, registry)
    _serve(proxy, "/v2/test/busybox/manifests/latest", body)
    result = Build(tmp_path, proxy, busybox_via(proxy) + "RUN true\n").run()
    assert result.exit_code == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.last_line == (f"error building image: pulling manifest {proxy.host}/test/"
                                f"busybox:latest ({sha256_digest(body)}): {why}")


@pytest.mark.parametrize("name", ["nested", "history-string"])
def test_a_malformed_image_config_is_one_line_naming_its_digest(
        name: str, proxy: FaultProxy, registry: Registry, busybox_image: str,
        tmp_path: Path) -> None:
    manifest, config = _busybox_documents(registry)
    if name == "nested":
        config_body, why = _nested(100_000), "image config is not valid JSON: nested too deeply"
    else:
        config["history"] = "none"
        config_body = json.dumps(config).encode()
        why = "image config's 'history' is a JSON string, not a list"
    digest = sha256_digest(config_body)
    manifest["config"] = {**manifest["config"], "digest": digest, "size": len(config_body)}
    _serve(proxy, "/v2/test/busybox/manifests/latest", json.dumps(manifest).encode())
    _serve(proxy, f"/v2/test/busybox/blobs/{digest}", config_body, "application/octet-stream")
    result = Build(tmp_path, proxy, busybox_via(proxy) + "RUN true\n").run()
    assert result.exit_code == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.last_line == (f"error building image: pulling config {proxy.host}/test/"
                                f"busybox@{digest}: {why}")


def _push_document(registry: Registry, repository: str, kind: str, body: bytes) -> str:
    """Upload ``body`` as a blob (``kind`` "blob") or put it as manifest ``1``."""
    digest = sha256_digest(body)
    if kind == "blob":
        start = requests.post(f"{registry.url}/v2/{repository}/blobs/uploads/", timeout=10)
        location = start.headers["Location"]
        sep = "&" if "?" in location else "?"
        url = location if location.startswith("http") else registry.url + location
        requests.put(f"{url}{sep}digest={digest}", data=body, timeout=10).raise_for_status()
    else:
        requests.put(f"{registry.url}/v2/{repository}/manifests/1", data=body, timeout=10,
                     headers={"Content-Type": OCI_MANIFEST}).raise_for_status()
    return digest


def test_a_base_layer_whose_diff_id_is_not_the_configs_fails_naming_both(
        registry: Registry, busybox_image: str, tmp_path: Path) -> None:
    manifest, config = _busybox_documents(registry)
    real = config["rootfs"]["diff_ids"][0]
    lie = sha256_digest(b"another layer")
    config["rootfs"]["diff_ids"] = [lie]
    config_body = json.dumps(config).encode()
    layer = manifest["layers"][0]["digest"]
    repository = f"faults/diffid-{uuid.uuid4().hex[:8]}"
    # The layer blob is mounted from the busybox repository; the config says another diff_id.
    requests.post(f"{registry.url}/v2/{repository}/blobs/uploads/?mount={layer}"
                  "&from=test/busybox", timeout=10).raise_for_status()
    manifest["config"] = {**manifest["config"], "digest": _push_document(
        registry, repository, "blob", config_body), "size": len(config_body)}
    _push_document(registry, repository, "manifest", json.dumps(manifest).encode())
    context = write_context(tmp_path / "context", f"FROM {registry.host}/{repository}:1\n"
                            "RUN true\n")
    result = run_spawning([sys.executable, "-m", "executor.cli", "--context", str(context),
                           "--dockerfile", str(context / "Dockerfile"), "--root",
                           str(tmp_path / "root"), "--no-push", "--insecure-pull"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"error building image: {registry.host}/{repository}:1: layer {layer} uncompresses to "
        f"diff_id {real}, but the image config's rootfs.diff_ids says {lie}")


# --- refused before anything is pulled or built ------------------------------------------------


def test_a_digest_destination_is_refused_before_the_build(
        registry: Registry, busybox_image: str, tmp_path: Path) -> None:
    context = write_context(tmp_path / "context", f"FROM {busybox_image}\nRUN true\n")
    destination = f"{registry.host}/faults/by-digest@{sha256_digest(b'x')}"
    result = run_spawning([sys.executable, "-m", "executor.cli", "--context", str(context),
                           "--dockerfile", str(context / "Dockerfile"), "--root",
                           str(tmp_path / "root"), "--destination", destination, "--insecure",
                           "--insecure-pull"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error building image: --destination {destination}: a digest cannot be pushed to (the "
        "image's digest is known only once it is built); give a tag, such as "
        f"{registry.host}/faults/by-digest:latest"]


def test_a_docker_config_that_is_a_fifo_is_refused_at_once(
        registry: Registry, busybox_image: str, tmp_path: Path) -> None:
    docker_config = tmp_path / "docker"
    docker_config.mkdir()
    os.mkfifo(docker_config / "config.json")
    context = write_context(tmp_path / "context", f"FROM {busybox_image}\nRUN true\n")
    started = time.monotonic()
    result = run_spawning([sys.executable, "-m", "executor.cli", "--context", str(context),
                           "--dockerfile", str(context / "Dockerfile"), "--root",
                           str(tmp_path / "root"), "--no-push", "--insecure-pull"],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "DOCKER_CONFIG": str(docker_config)})
    assert time.monotonic() - started < 30
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"error building image: reading registry credentials: {docker_config}/config.json: "
        "not a regular file (a FIFO)")


def test_a_custom_platform_the_base_lacks_warns_as_buildkit_and_labels_the_target(
        registry: Registry, busybox_image: str, tmp_path: Path) -> None:
    context = write_context(tmp_path / "context", f"FROM {busybox_image}\nENV A=1\n")
    destination = f"{registry.host}/faults/arm64:1"
    result = run_spawning([sys.executable, "-m", "executor.cli", "--context", str(context),
                           "--dockerfile", str(context / "Dockerfile"), "--root",
                           str(tmp_path / "root"), "--destination", destination, "--insecure",
                           "--insecure-pull", "--custom-platform", "linux/arm64"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^WARN\[\d{4}\] InvalidBaseImagePlatform: Base image "
                     + re.escape(f'{busybox_image} was pulled with platform "linux/amd64", '
                                 'expected "linux/arm64" for current build (Dockerfile:1)') + "$",
                     result.stderr, re.MULTILINE), result.stderr
    from tests.support.runtime import inspect_config

    config = inspect_config(destination)
    assert (config["os"], config["architecture"]) == ("linux", "arm64")


# --- an error exit while another request hangs -------------------------------------------------


def _two_layer_base(registry: Registry, tmp_path: Path) -> tuple[str, list[str]]:
    """An image of two layers (busybox and one file), pushed by kiln; its layer digests."""
    repository = f"faults/base-{uuid.uuid4().hex[:8]}"
    context = write_context(tmp_path / "base-context",
                            f"FROM {registry.host}/test/busybox:latest\nRUN echo 2 > /second\n")
    pushed = run_spawning(
        [sys.executable, "-m", "executor.cli", "--context", str(context), "--root",
         str(tmp_path / "base-root"), "--kaniko-dir", str(tmp_path / "base-kiln"),
         "--destination", f"{registry.host}/{repository}:latest", "--insecure",
         "--insecure-pull"], capture_output=True, text=True, check=False,
        stdin=subprocess.DEVNULL)
    assert pushed.returncode == 0, pushed.stderr
    manifest = requests.get(f"{registry.url}/v2/{repository}/manifests/latest", timeout=10,
                            headers={"Accept": OCI_MANIFEST}).json()
    return repository, [layer["digest"] for layer in manifest["layers"]]


def test_a_failing_pull_exits_at_once_while_another_layer_request_hangs(
        proxy: FaultProxy, registry: Registry, busybox_image: str, tmp_path: Path) -> None:
    repository, (first, second) = _two_layer_base(registry, tmp_path)
    proxy.add(Fault("GET", first, 500, times=99))
    # The registry takes the request for the other layer and never answers, not even headers.
    proxy.add(Fault("GET", second, action="hang", stall=60))
    build = Build(tmp_path, proxy, f"FROM {proxy.host}/{repository}:latest\nRUN true\n")
    started = time.monotonic()
    result = build.run(env={"KILN_REGISTRY_TIMEOUT": "60"}, timeout=90)
    elapsed = time.monotonic() - started
    assert result.exit_code == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.last_line.startswith(f"error building image: fetching blob {proxy.host}/"
                                       f"{repository}@{first}: 500"), result.stderr
    assert any(status == "hang" for _, _, status in proxy.seen)
    assert elapsed < 10, f"exited after {elapsed:.1f}s"
