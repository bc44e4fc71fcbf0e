"""Realistic Dockerfiles built in place under a pod's restrictions (tests/support/pod.py).

apt with cache mounts on the Debian minbase (needs the Debian mirror), a Python app installed by
pip from a private index (a loopback server of local wheels; its URL is a build secret) with a
pip cache mount, a Go-style multi-stage build into a distroless-style final stage, and builds
run twice in a row in one container, where the second one finds the cache mount warm.
"""

from __future__ import annotations

import http.server
import os
import statistics
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_in_place_pod import layer_listings
from tests.support.container import Bind, run_container
from tests.support.containerd import Containerd
from tests.support.executor_image import write_dockerfile
from tests.support.kiln import run_executor
from tests.support.pod import executor_args, gitlab_job_script, pod_bundle
from tests.support.registry import Registry
from tests.support.runtime import run_image, unpack_image

pytestmark = pytest.mark.e2e

RESULTS = Path("/work/scratch/inplace-realistic-results.txt")


@pytest.fixture(scope="module")
def executor_rootfs(executor_image: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return unpack_image(executor_image, tmp_path_factory.mktemp("realistic-executor-rootfs"))


def report(line: str) -> None:
    """Numbers a test measured, for the bench notes (not an assertion)."""
    print(line)
    with RESULTS.open("a") as handle:
        handle.write(line + "\n")


GO_STYLE = """\
FROM {base} AS build
WORKDIR /src
RUN echo "the image's /src" > /src/README
RUN --mount=target=. --mount=type=cache,target=/root/.cache/go-build \\
    sh -c 'test -e main.go && test ! -e README \\
           && if [ -e /root/.cache/go-build/app ]; then echo "build cache hit"; \\
              else cp /bin/busybox /root/.cache/go-build/app; fi \\
           && mkdir -p /out && cp /root/.cache/go-build/app /out/echo'

FROM scratch
COPY --from=build /out/echo /echo
USER 65532:65532
ENTRYPOINT ["/echo"]
CMD ["hello from a static binary"]
"""


def test_a_go_style_build_into_a_distroless_style_stage_in_a_pod(
        executor_rootfs: Path, registry: Registry, busybox_image: str, containerd: Containerd,
        tmp_path: Path) -> None:
    context = write_dockerfile(tmp_path / "context", GO_STYLE.format(base=busybox_image))
    (context / "main.go").write_text("package main\n")
    dest = f"{registry.host}/realistic/go:1"
    pod = pod_bundle(tmp_path / "c", executor_rootfs, registry, context, executor_args(dest))
    result = run_container(pod.bundle, timeout=600)
    assert result.exit_code == 0, result.stderr[-6000:]
    layers = layer_listings(dest, tmp_path / "layers")
    assert [sorted(layer) for layer in layers] == [["echo"]]
    assert run_image(dest, workdir=tmp_path / "run").stdout == "hello from a static binary\n"
    assert containerd.pull_and_run(dest).stdout == "hello from a static binary\n"


APT = """\
FROM {base}
ARG CACHE
ARG NAME
# The RUN times itself into /out, the job's volume (a mount point: never in a layer).
RUN --mount=type=cache,id=${{CACHE}}-archives,target=/var/cache/apt,sharing=locked \\
    --mount=type=cache,id=${{CACHE}}-lists,target=/var/lib/apt,sharing=locked \\
    s=$(cut -d' ' -f1 /proc/uptime) \\
 && apt-get update -q \\
 && apt-get install -y -q --download-only --no-install-recommends hello python3-minimal \\
 && echo "fetch-$NAME $s $(cut -d' ' -f1 /proc/uptime)" >> /out/times \\
 && apt-get install -y -q --no-install-recommends hello python3-minimal \\
 && echo "run-$NAME $s $(cut -d' ' -f1 /proc/uptime)" >> /out/times
CMD ["hello"]
"""


def _timed(command: str, name: str) -> str:
    """A job-script step that records how long ``command`` took (centiseconds of uptime)."""
    return (f"s=$(cut -d' ' -f1 /proc/uptime) && {{ {command} > /out/{name}.log 2>&1; }} "
            f"&& e=$(cut -d' ' -f1 /proc/uptime) && echo {name} $s $e >> /out/times")


def _first_need(log: Path) -> str:
    return next(line for line in log.read_text().splitlines()
                if line.startswith("Need to get"))


def _durations(times: Path) -> dict[str, float]:
    out = {}
    for line in times.read_text().splitlines():
        name, start, end = line.split()
        out[name] = float(end) - float(start)
    return out


def test_apt_cache_mounts_make_the_second_build_in_a_container_download_nothing(
        executor_rootfs: Path, registry: Registry, debian_image: str, containerd: Containerd,
        tmp_path: Path) -> None:
    context = write_dockerfile(tmp_path / "context", APT.format(base=debian_image))
    repo = f"{registry.host}/realistic/apt"
    # One cold and one warm build prove the cache mounts hit; KILN_APT_ROUNDS=3 gives the
    # medians of the closing note's speedup (a measurement, too slow for every CI run).
    rounds = int(os.environ.get("KILN_APT_ROUNDS", "1"))
    steps = []
    for i in range(rounds):  # each round: a cold cache, then the same cache again
        for kind in ("cold", "warm"):
            args = " ".join(executor_args(f"{repo}:{kind}{i}", "--build-arg", f"CACHE=apt{i}",
                                          "--build-arg", f"NAME={kind}{i}"))
            steps.append(_timed(args, f"{kind}{i}"))
    out = tmp_path / "out"
    out.mkdir()
    pod = pod_bundle(tmp_path / "c", executor_rootfs, registry, context,
                     gitlab_job_script(registry, *steps), extra_binds=(Bind(out, "/out"),),
                     gitlab=True)
    result = run_container(pod.bundle, timeout=1500)
    assert result.exit_code == 0, result.stderr[-3000:] + "".join(
        p.read_text()[-3000:] for p in sorted(out.glob("*.log")))
    for i in range(rounds):  # what the first apt-get install of each build had to fetch
        assert _first_need(out / f"warm{i}.log").startswith("Need to get 0 B/")
        assert not _first_need(out / f"cold{i}.log").startswith("Need to get 0 B/")
    times = _durations(out / "times")
    for what, prefix in (("whole build", ""), ("the apt RUN alone", "run-"),
                         ("apt-get update + download in the RUN", "fetch-")):
        cold = statistics.median(times[f"{prefix}cold{i}"] for i in range(rounds))
        warm = statistics.median(times[f"{prefix}warm{i}"] for i in range(rounds))
        report(f"apt-get update + install hello python3-minimal, in place, {what}, {rounds} "
               f"rounds: cold median {cold:.2f} s, warm (cache mounts hit) median {warm:.2f} s, "
               f"speedup {cold / warm:.2f}x")
    report(f"  all times: {times}")
    for layer in layer_listings(f"{repo}:warm0", tmp_path / "layers")[1:]:
        assert not any(n.startswith(("var/cache/apt/", "var/lib/apt/")) for n in layer), \
            sorted(layer)
    assert "Hello, world!" in run_image(f"{repo}:warm0", workdir=tmp_path / "run").stdout
    assert "Hello, world!" in containerd.pull_and_run(f"{repo}:warm0").stdout


# --- Python: pip from a private index, its URL a secret, with a pip cache mount -------------

def _wheel(directory: Path, name: str, version: str) -> Path:
    """A pure-Python wheel with one module whose ``main()`` prints a greeting."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": "def main():\n    print('hello from a private wheel')\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: kiln-tests\nRoot-Is-Purelib: true\n"
                              "Tag: py3-none-any\n"}
    record = "".join(f"{n},,\n" for n in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in {**files, f"{info}/RECORD": record}.items():
            archive.writestr(member, text)
    return path


def _npm_tarball(path: Path) -> None:
    """An npm package tarball (everything under ``package/``), as a registry serves it."""
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        for name, text in {"package/package.json": '{"name": "left-pad", "version": "1.3.0"}\n',
                           "package/index.js": "module.exports = s => s.padStart(8);\n"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text.encode()))


@pytest.fixture(scope="module")
def private_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PEP 503 simple index of local wheels on loopback; yields its URL."""
    root = tmp_path_factory.mktemp("index")
    wheel = _wheel(root / "files", "kilnapp", "1.0")
    (root / "simple/kilnapp").mkdir(parents=True)
    (root / "simple/kilnapp/index.html").write_text(
        f'<a href="../../files/{wheel.name}">{wheel.name}</a>\n')
    _npm_tarball(root / "files" / "left-pad-1.3.0.tgz")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            pass

        def end_headers(self) -> None:
            # As PyPI: files may be cached, so pip's HTTP cache (the cache mount) keeps them.
            self.send_header("Cache-Control", "max-age=3600")
            super().end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/simple"
    finally:
        server.shutdown()


@pytest.fixture(scope="module")
def python_image(registry: Registry, debian_image: str,
                 tmp_path_factory: pytest.TempPathFactory) -> str:
    """Debian with python3-pip, built by kiln in sandbox mode (needs the Debian mirror)."""
    tmp = tmp_path_factory.mktemp("python-base")
    context = write_dockerfile(tmp / "context", f"FROM {debian_image}\n"
                               "RUN apt-get update -q && apt-get install -y -q "
                               "--no-install-recommends python3-pip "
                               "&& rm -rf /var/lib/apt/lists/*\n")
    dest = f"{registry.host}/test/python:3"
    result = run_executor(context, tmp / "root", "--destination", dest, "--insecure",
                          "--insecure-pull", timeout=900)
    assert result.exit_code == 0, result.stderr[-3000:]
    return dest


PIP = """\
FROM {base}
WORKDIR /app
COPY app.py .
RUN --mount=type=cache,target=/root/.cache/pip \\
    --mount=type=secret,id=pipconf,target=/etc/pip.conf,required=true \\
    pip install --break-system-packages --no-warn-script-location kilnapp
CMD ["python3", "-c", "import kilnapp; kilnapp.main()"]
"""


def test_a_python_app_with_a_pip_cache_mount_and_a_secret_index_in_a_pod(
        executor_rootfs: Path, registry: Registry, python_image: str, private_index: str,
        tmp_path: Path) -> None:
    context = write_dockerfile(tmp_path / "context", PIP.format(base=python_image))
    (context / "app.py").write_text("print('app')\n")
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    # http:// index: pip caches only what comes from https or a trusted host.
    host = private_index.split("/")[2]
    (secrets / "pip.conf").write_text(f"[global]\nindex-url = {private_index}\n"
                                      f"trusted-host = {host}\n")
    repo = f"{registry.host}/realistic/pip"
    steps = [_timed(" ".join(executor_args(f"{repo}:{n}", "--secret",
                                           "id=pipconf,src=/secrets/pip.conf")), n)
             for n in ("first", "second")]
    out = tmp_path / "out"
    out.mkdir()
    pod = pod_bundle(tmp_path / "c", executor_rootfs, registry, context,
                     gitlab_job_script(registry, *steps),
                     extra_binds=(Bind(out, "/out"), Bind(secrets, "/secrets", readonly=True)),
                     gitlab=True)
    result = run_container(pod.bundle, timeout=900)
    assert result.exit_code == 0, result.stderr[-3000:] + "".join(
        p.read_text()[-3000:] for p in sorted(out.glob("*.log")))
    assert "Downloading" in (out / "first.log").read_text()
    assert "Downloading" not in (out / "second.log").read_text()  # the wheel came from the cache
    layers = layer_listings(f"{repo}:second", tmp_path / "layers")
    for layer in layers:
        for name, data in layer.items():
            assert not name.startswith(("root/.cache", "etc/pip.conf")), name
            assert private_index.encode() not in data, name
    out_run = run_image(f"{repo}:second", workdir=tmp_path / "run")
    assert out_run.stdout == "hello from a private wheel\n", out_run.stderr


# --- Node: an npm cache mount (a busybox stand-in for npm: the base has no Node) -------------

NPM_CI = """\
set -e
cache=/root/.npm/_cacache
mkdir -p "$cache"
for url in $(grep -o 'http://[^"]*' package-lock.json); do
  file="$cache/$(basename "$url")"
  if [ -e "$file" ]; then echo "npm: cache hit $(basename "$url")"
  else wget -q -O "$file.part" "$url" && mv "$file.part" "$file" && echo "npm: fetched $url"; fi
  name=$(basename "$url" | sed 's/-[0-9.]*tgz$//')
  mkdir -p "node_modules/$name" && tar -xzf "$file" -C "node_modules/$name" --strip-components=1
done
"""

NODE = """\
FROM {base}
WORKDIR /app
COPY package-lock.json npm-ci.sh ./
RUN --mount=type=cache,target=/root/.npm sh npm-ci.sh
CMD ["cat", "/app/node_modules/left-pad/index.js"]
"""


def test_a_node_style_app_with_an_npm_cache_mount_twice_in_one_container(
        executor_rootfs: Path, registry: Registry, busybox_image: str, private_index: str,
        tmp_path: Path) -> None:
    context = write_dockerfile(tmp_path / "context", NODE.format(base=busybox_image))
    files = private_index.rsplit("/", 1)[0] + "/files"
    (context / "package-lock.json").write_text(
        f'{{"packages": {{"node_modules/left-pad": {{"resolved": '
        f'"{files}/left-pad-1.3.0.tgz"}}}}}}\n')
    (context / "npm-ci.sh").write_text(NPM_CI)
    repo = f"{registry.host}/realistic/node"
    steps = [_timed(" ".join(executor_args(f"{repo}:{n}")), n) for n in ("first", "second")]
    out = tmp_path / "out"
    out.mkdir()
    pod = pod_bundle(tmp_path / "c", executor_rootfs, registry, context,
                     gitlab_job_script(registry, *steps), extra_binds=(Bind(out, "/out"),),
                     gitlab=True)
    result = run_container(pod.bundle, timeout=600)
    assert result.exit_code == 0, result.stderr[-3000:] + "".join(
        p.read_text()[-3000:] for p in sorted(out.glob("*.log")))
    assert "npm: fetched" in (out / "first.log").read_text()
    assert "npm: cache hit left-pad-1.3.0.tgz" in (out / "second.log").read_text()
    layers = layer_listings(f"{repo}:second", tmp_path / "layers")
    assert not any(name.startswith("root") for layer in layers[1:] for name in layer)
    assert "app/node_modules/left-pad/index.js" in layers[-1]
    out_run = run_image(f"{repo}:second", workdir=tmp_path / "run")
    assert out_run.stdout == "module.exports = s => s.padStart(8);\n", out_run.stderr
