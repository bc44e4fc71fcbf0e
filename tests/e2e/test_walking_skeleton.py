"""A Dockerfile built in sandbox mode, pushed to a real registry, read by skopeo, run by crun."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.support.kiln import run_executor, write_context
from tests.support.registry import Registry
from tests.support.runtime import inspect_config, inspect_image, run_image

pytestmark = pytest.mark.e2e

DOCKERFILE = """\
FROM {base}
RUN echo "written by RUN" > /etc/run.txt && echo "appended" >> /etc/motd \\
    && rm /usr/share/doc/base.txt
COPY app.txt /app/
ENV GREETING=hello
WORKDIR /app
USER kiln
ENTRYPOINT ["sh", "-c"]
CMD ["echo $GREETING; cat app.txt; cat /etc/run.txt; tail -n 1 /etc/motd; id -u; pwd; \\
test -e /usr/share/doc/base.txt && echo present || echo deleted"]
"""


@pytest.fixture(scope="module")
def built(busybox_image: str, registry: Registry, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("skeleton")
    context = write_context(tmp / "context", DOCKERFILE.format(base=busybox_image),
                            {"app.txt": "from the context\n"})
    dest = f"{registry.host}/e2e/skeleton:1"
    result = run_executor(context, tmp / "root", "--destination", dest,
                          "--insecure", "--insecure-pull", "--digest-file",
                          str(tmp / "digest"))
    assert result.exit_code == 0, result.stderr
    return dest, result, (tmp / "digest").read_text()


def test_the_image_has_one_layer_per_filesystem_step(built, busybox_image: str) -> None:
    dest, _, digest = built
    base_layers = len(inspect_image(busybox_image)["Layers"])
    info = inspect_image(dest)
    assert info["Digest"] == digest
    # RUN, COPY and WORKDIR add a layer each; WORKDIR /app exists already (COPY made it), so
    # its layer is empty, as BuildKit's is.
    assert len(info["Layers"]) == base_layers + 3


def test_the_config_carries_env_workdir_user_entrypoint_and_cmd(built) -> None:
    dest, _, _ = built
    config = inspect_config(dest)["config"]
    assert "GREETING=hello" in config["Env"]
    assert config["WorkingDir"] == "/app"
    assert config["User"] == "kiln"
    assert config["Entrypoint"] == ["sh", "-c"]
    assert config["Cmd"][0].startswith("echo $GREETING")


def test_crun_runs_the_pushed_image_as_the_dockerfile_says(built, tmp_path: Path) -> None:
    dest, _, _ = built
    result = run_image(dest, workdir=tmp_path)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        "hello", "from the context", "written by RUN", "appended", "1000", "/app", "deleted"]


def test_the_build_logs_like_kaniko(built) -> None:
    _, result, _ = built
    lines = result.stderr.splitlines()
    assert any(line.startswith("INFO[") and "Taking snapshot of full filesystem..." in line
               for line in lines)
    assert any("Pushed " in line for line in lines)


def test_containerd_pulls_and_runs_the_pushed_image(built, containerd) -> None:
    dest, _, _ = built
    result = containerd.pull_and_run(dest)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        "hello", "from the context", "written by RUN", "appended", "1000", "/app", "deleted"]


def test_each_layer_pushed_or_pulled_is_logged_with_size_and_throughput(built) -> None:
    _, result, _ = built
    assert re.search(r"INFO\[\d+\] Pulled layer sha256:[0-9a-f]{12} \(\d+\.\d MB in "
                     r"\d+\.\ds, [\d.]+ MB/s\)", result.stderr)
    assert re.search(r"INFO\[\d+\] Pushed layer sha256:[0-9a-f]{12} \(\d+\.\d MB in ",
                     result.stderr)


def test_builder_output_lists_every_pushed_name(busybox_image: str, registry: Registry,
                                                tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    context = write_context(tmp_path / "context", f"FROM {busybox_image}\nRUN true\n")
    monkeypatch.setenv("BUILDER_OUTPUT", str(tmp_path))
    one, two = f"{registry.host}/e2e/out:a", f"{registry.host}/e2e/out:b"
    result = run_executor(context, tmp_path / "root", "-d", one, "-d", two, "--insecure",
                          "--insecure-pull", "--digest-file", str(tmp_path / "digest"))
    assert result.exit_code == 0, result.stderr
    digest = (tmp_path / "digest").read_text()
    lines = [json.loads(line) for line in (tmp_path / "images").read_text().splitlines()]
    assert lines == [{"name": one, "digest": digest}, {"name": two, "digest": digest}]


def test_label_flags_add_to_the_dockerfiles_labels_and_win_over_them(
        busybox_image: str, registry: Registry, tmp_path: Path) -> None:
    context = write_context(tmp_path / "context", f"FROM {busybox_image}\n"
                            "LABEL from.dockerfile=yes overridden=dockerfile\n")
    ref = f"{registry.host}/e2e/labels:1"
    result = run_executor(context, tmp_path / "root", "-d", ref, "--insecure", "--insecure-pull",
                          "--label", "overridden=flag", "--label", "from.flag=yes")
    assert result.exit_code == 0, result.stderr
    assert inspect_config(ref)["config"]["Labels"] == {
        "from.dockerfile": "yes", "overridden": "flag", "from.flag": "yes"}
