"""The fork's flags that kiln takes as a kaniko user types them: --dryrun, --credential-helpers,
--pre-cleanup / --cleanup and their KANIKO_* variables, --force-build-metadata and the old
--whitelist-var-run. Each runs the real executor against the registry fixture."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import KILN_PASSWORD, KILN_USER, SecureRegistry
from tests.support.context_servers import GitDaemon
from tests.support.kiln import ExecutorRun, run_executor_on, write_context
from tests.support.registry import Registry
from tests.support.runtime import inspect_image, require_tool

pytestmark = pytest.mark.e2e

PLAN_DOCKERFILE = """\
ARG BASE
FROM $BASE AS tools
RUN echo tools > /tools.txt
FROM tools AS build
COPY version.txt /src/
RUN cat /src/version.txt /tools.txt > /out.txt
FROM $BASE
COPY --from=build /out.txt /out.txt
CMD ["cat", "/out.txt"]
"""


def git_repository(root: Path, name: str, files: dict[str, str]) -> None:
    """``root/NAME.git``, bare, one commit of ``files`` on main."""
    git = require_tool("git", "git")
    env = {**os.environ, "GIT_AUTHOR_NAME": "kiln", "GIT_AUTHOR_EMAIL": "kiln@example.com",
           "GIT_COMMITTER_NAME": "kiln", "GIT_COMMITTER_EMAIL": "kiln@example.com",
           "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}
    work = write_context(root / f"{name}-work", files.pop("Dockerfile"), files)
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "c"],
                 ["clone", "-q", "--bare", str(work), str(root / f"{name}.git")]):
        subprocess.run([git, *args], cwd=work, env=env, check=True, capture_output=True)


@pytest.fixture(scope="module")
def plan_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitDaemon]:
    root = tmp_path_factory.mktemp("plan-git")
    git_repository(root, "plan", {"Dockerfile": PLAN_DOCKERFILE, "version.txt": "v1\n"})
    with GitDaemon(root) as daemon:
        yield daemon


def executor(context: str | Path, root: Path, *args: str,
             env: dict[str, str | None] | None = None) -> ExecutorRun:
    """The executor; a git:// context is fetched over the git protocol, as kaniko does with
    GIT_PULL_METHOD=git."""
    return run_executor_on(str(context), root, *args,
                           env={"GIT_PULL_METHOD": "git", **(env or {})})


def simple_context(tmp_path: Path, dockerfile: str) -> Path:
    return write_context(tmp_path / "context", dockerfile, {"app.txt": "app\n"})


# -- --dryrun ------------------------------------------------------------------------------

def test_dryrun_prints_stages_base_digests_instructions_and_destinations(
        tmp_path: Path, plan_daemon: GitDaemon, registry: Registry, busybox_image: str) -> None:
    dest = f"{registry.host}/flags/dryrun:1"
    result = executor(f"{plan_daemon.url}/plan.git", tmp_path / "root", "--dryrun",
                      "--destination", dest, "--insecure", "--insecure-pull",
                      "--build-arg", f"BASE={busybox_image}")
    assert result.exit_code == 0, result.stderr
    digest = inspect_image(busybox_image)["Digest"]
    assert result.stdout.splitlines() == [
        "Plan for Dockerfile (3 of 3 stages, platform linux/amd64):",
        f"stage 0 'tools' FROM {busybox_image}@{digest}  (Dockerfile:2)",
        "  Dockerfile:3  RUN echo tools > /tools.txt",
        "stage 1 'build' FROM stage 0 'tools'  (Dockerfile:4)",
        "  Dockerfile:5  COPY version.txt /src/",
        "  Dockerfile:6  RUN cat /src/version.txt /tools.txt > /out.txt",
        f"stage 2 '2' FROM {busybox_image}@{digest}  (Dockerfile:7)",
        "  Dockerfile:8  COPY --from=build /out.txt /out.txt",
        '  Dockerfile:9  CMD ["cat", "/out.txt"]',
        "destinations:",
        f"  {dest} (push permitted)",
    ]


def test_dryrun_builds_and_pushes_nothing(tmp_path: Path, plan_daemon: GitDaemon,
                                          registry: Registry, busybox_image: str) -> None:
    result = executor(f"{plan_daemon.url}/plan.git", tmp_path / "root", "--dryrun",
                      "--destination", f"{registry.host}/flags/nothing:1", "--insecure",
                      "--insecure-pull", "--build-arg", f"BASE={busybox_image}")
    assert result.exit_code == 0, result.stderr
    assert "Building stage" not in result.stderr
    assert "Build report" not in result.stderr
    assert registry.tags("flags/nothing") == []
    assert not any((tmp_path / "root").iterdir())


def test_dryrun_still_checks_the_destinations(tmp_path: Path, plan_daemon: GitDaemon,
                                              basic_registry: SecureRegistry,
                                              busybox_image: str) -> None:
    host = basic_registry.registry.host
    config = tmp_path / "docker"
    config.mkdir()
    result = executor(f"{plan_daemon.url}/plan.git", tmp_path / "root", "--dryrun",
                      "--destination", f"{host}/flags/denied:1", "--insecure-pull",
                      "--registry-certificate", f"{host}={basic_registry.tls.ca}",
                      "--build-arg", f"BASE={busybox_image}",
                      env={"DOCKER_CONFIG": str(config)})
    assert result.exit_code == 1, result.stderr
    assert result.last_line.startswith(f"error building image: pushing to {host}/flags/denied: "
                                       "401 Unauthorized")
    assert result.stdout == ""


# -- --credential-helpers ------------------------------------------------------------------

def env_credentials(host: str, config: Path) -> dict[str, str | None]:
    """The fork's env source: KANIKO_<HOST>_USER/_PASSWORD (dots as _, port kept)."""
    name = "KANIKO_" + host.replace(".", "_").upper()
    return {"DOCKER_CONFIG": str(config), f"{name}_USER": KILN_USER,
            f"{name}_PASSWORD": KILN_PASSWORD}


def push_with_helpers(tmp_path: Path, secure: SecureRegistry, *helpers: str) -> ExecutorRun:
    host = secure.registry.host
    config = tmp_path / "docker"
    config.mkdir(exist_ok=True)
    context = simple_context(tmp_path, f"FROM {secure.base}\nCOPY app.txt /\n")
    return executor(context, tmp_path / "root", "--destination", f"{host}/flags/creds:1",
                    "--registry-certificate", f"{host}={secure.tls.ca}",
                    *[f"--credential-helpers={h}" for h in helpers],
                    env=env_credentials(host, config))


def test_the_env_credential_helper_is_used_by_default(tmp_path: Path,
                                                      basic_registry: SecureRegistry) -> None:
    result = push_with_helpers(tmp_path, basic_registry)
    assert result.exit_code == 0, result.stderr


def test_credential_helpers_env_alone_still_reads_the_environment(
        tmp_path: Path, basic_registry: SecureRegistry) -> None:
    result = push_with_helpers(tmp_path, basic_registry, "env")
    assert result.exit_code == 0, result.stderr


def test_an_empty_credential_helpers_turns_the_built_in_helpers_off(
        tmp_path: Path, basic_registry: SecureRegistry) -> None:
    result = push_with_helpers(tmp_path, basic_registry, "")
    assert result.exit_code == 1, result.stderr
    assert "all credential helpers disabled" in result.stderr
    assert "401 Unauthorized" in result.last_line


def test_credential_helpers_without_env_do_not_read_the_environment(
        tmp_path: Path, basic_registry: SecureRegistry) -> None:
    result = push_with_helpers(tmp_path, basic_registry, "google", "ecr", "nosuch")
    assert result.exit_code == 1, result.stderr
    assert "Unknown cred-source 'nosuch', skipping." in result.stderr


# -- --pre-cleanup, --cleanup, KANIKO_PRE_CLEANUP, KANIKO_CLEANUP ---------------------------

def no_push_build(tmp_path: Path, busybox_image: str, *args: str,
                  env: dict[str, str | None] | None = None) -> ExecutorRun:
    context = simple_context(tmp_path, f"FROM {busybox_image}\nCOPY app.txt /\n")
    return executor(context, tmp_path / "root", "--no-push", "--insecure-pull", *args,
                    env=env)


@pytest.mark.parametrize("how", [["--pre-cleanup"], ["--pre-cleanup=true"], []])
def test_pre_cleanup_clears_the_filesystem_before_the_build(tmp_path: Path, busybox_image: str,
                                                            how: list[str]) -> None:
    env: dict[str, str | None] = {"KANIKO_PRE_CLEANUP": None if how else "true"}
    context = simple_context(tmp_path, f"FROM {busybox_image}\nCOPY app.txt /\n"
                             f"COPY --from={busybox_image} /bin/busybox /copied\n")
    result = executor(context, tmp_path / "root", "--no-push", "--insecure-pull", *how,
                      env=env)
    assert result.exit_code == 0, result.stderr
    lines = result.stderr.splitlines()
    first = next(i for i, line in enumerate(lines) if "Deleting filesystem..." in line)
    assert first < next(i for i, line in enumerate(lines) if "Building stage" in line)


def test_kaniko_pre_cleanup_false_or_unreadable_is_off(tmp_path: Path,
                                                       busybox_image: str) -> None:
    result = no_push_build(tmp_path, busybox_image, env={"KANIKO_PRE_CLEANUP": "maybe"})
    assert result.exit_code == 0, result.stderr
    assert "Deleting filesystem..." not in result.stderr


@pytest.mark.parametrize("how", [["--cleanup"], []])
def test_cleanup_and_kaniko_cleanup_remove_the_built_root(tmp_path: Path, busybox_image: str,
                                                          how: list[str]) -> None:
    env: dict[str, str | None] = {"KANIKO_CLEANUP": None if how else "1"}
    result = no_push_build(tmp_path, busybox_image, *how, env=env)
    assert result.exit_code == 0, result.stderr
    assert not (tmp_path / "root").exists()


def test_the_flag_wins_over_kaniko_cleanup(tmp_path: Path, busybox_image: str) -> None:
    result = no_push_build(tmp_path, busybox_image, "--cleanup=false",
                           env={"KANIKO_CLEANUP": "true"})
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "root" / "app.txt").exists()


# -- deprecated flags -----------------------------------------------------------------------

def test_force_build_metadata_is_accepted_with_the_forks_warning(tmp_path: Path,
                                                                 busybox_image: str) -> None:
    result = no_push_build(tmp_path, busybox_image, "--force-build-metadata")
    assert result.exit_code == 0, result.stderr
    assert ("WARN[0000] Flag --force-build-metadata is deprecated. This is the new default "
            "behaviour") in result.stderr.splitlines()


def var_run_files(tmp_path: Path, busybox_image: str, *args: str) -> tuple[ExecutorRun, int]:
    """Build a RUN that writes under /var/run; the files its layer holds (from --report)."""
    context = simple_context(tmp_path, f"FROM {busybox_image}\n"
                             "RUN mkdir -p /var/run/app && echo 1 > /var/run/app/pid\n")
    result = executor(context, tmp_path / "root", "--no-push", "--insecure-pull",
                      "--report", str(tmp_path / "report.json"), *args)
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    return result, report["steps"][0]["layer"]["filesChanged"]


def test_whitelist_var_run_false_keeps_var_run_with_kaniko_deprecation_warning(
        tmp_path: Path, busybox_image: str) -> None:
    result, files = var_run_files(tmp_path, busybox_image, "--whitelist-var-run=false")
    assert ("WARN[0000] Flag --whitelist-var-run has been deprecated, Please use "
            "ignore-var-run instead.") in result.stderr.splitlines()
    assert files >= 3  # /var/run, /var/run/app and its pid file


def test_var_run_is_left_out_by_default(tmp_path: Path, busybox_image: str) -> None:
    result, files = var_run_files(tmp_path, busybox_image)
    assert "deprecated" not in result.stderr
    assert files <= 1  # /var itself, when the base had none; nothing under /var/run


def test_whitelist_var_run_and_ignore_var_run_disagreeing_is_refused(
        tmp_path: Path, busybox_image: str) -> None:
    result = no_push_build(tmp_path, busybox_image, "--whitelist-var-run=true",
                           "--ignore-var-run=false")
    assert result.exit_code == 1
    assert result.last_line == ("error building image: --whitelist-var-run True and "
                                "--ignore-var-run False disagree; give --ignore-var-run only")
