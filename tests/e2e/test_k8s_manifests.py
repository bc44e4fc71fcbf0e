"""k8s/: the manifests validate, and the Job's container spec, run under crun, pushes an image."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.support.container import Bind, ContainerSpec, run_container, write_config
from tests.support.executor_image import busybox_dockerfile, docker_config
from tests.support.registry import Registry
from tests.support.runtime import RunResult, inspect_config, run_image, unpack_image

pytestmark = pytest.mark.e2e

K8S = Path(__file__).resolve().parents[2] / "k8s"
#: The Kubernetes version the manifests are checked against (kubernetes-validate's schemas).
KUBERNETES_VERSION = "1.30.0"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((K8S / name).read_text())
    return data


def test_the_job_validates_strictly() -> None:
    kubernetes_validate.validate(load("job.yaml"), KUBERNETES_VERSION, strict=True)


def test_the_tekton_task_steps_validate_as_kubernetes_containers() -> None:
    # kubernetes-validate has no schema for Tekton's CRDs; a Step is a Container whose
    # resources are called computeResources and which may carry a script instead of args.
    task = load("tekton-task.yaml")
    assert (task["apiVersion"], task["kind"]) == ("tekton.dev/v1", "Task")
    containers = []
    for step in task["spec"]["steps"]:
        container = copy.deepcopy(step)
        if "computeResources" in container:
            container["resources"] = container.pop("computeResources")
        if "script" in container:
            container["command"] = ["sh", "-c", container.pop("script")]
        containers.append(container)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "kiln-task"},
           "spec": {"containers": containers}}
    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)


def test_the_gitlab_job_runs_the_debug_image_without_its_entrypoint() -> None:
    job = yaml.safe_load((K8S / "gitlab-ci.yml").read_text())["build-image"]
    assert job["image"]["name"].endswith("-debug")
    assert job["image"]["entrypoint"] == [""]
    assert any(line.startswith("/kaniko/executor") for line in job["script"])


def kubelet_files(directory: Path) -> tuple[Bind, ...]:
    """The files the kubelet mounts into every container."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {"hosts": "127.0.0.1 localhost\n", "hostname": "kiln-build-x7k2p\n",
             "resolv.conf": "nameserver 10.96.0.10\n", "termination-log": ""}
    for name, text in files.items():
        (directory / name).write_text(text)
    return (Bind(directory / "hosts", "/etc/hosts"),
            Bind(directory / "hostname", "/etc/hostname"),
            Bind(directory / "resolv.conf", "/etc/resolv.conf"),
            Bind(directory / "termination-log", "/dev/termination-log"))


def run_pod_container(container: dict[str, Any], args: list[str], image: str,
                      sources: dict[str, Path], tmp_path: Path,
                      extra_env: dict[str, str] | None = None) -> RunResult:
    """Run ``container`` of a pod spec as the kubelet would, under crun: ``image`` (the
    executor image stands in for the manifest's), the image's environment under the
    container's, its command (or the image's entrypoint) with ``args``, each volume mount
    bound from ``sources`` (by volume name), and the files the kubelet mounts."""
    config = inspect_config(image)["config"]
    env = dict(e.split("=", 1) for e in config["Env"])
    env.update({e["name"]: e["value"] for e in container.get("env", [])})
    env.update(extra_env or {})
    binds = [Bind(sources[m["name"]], m["mountPath"], m.get("readOnly", False))
             for m in container["volumeMounts"]]
    rootfs = unpack_image(image, tmp_path / "image")
    spec = ContainerSpec(args=[*(container.get("command") or config["Entrypoint"]), *args],
                         env=env, binds=(*binds, *kubelet_files(tmp_path / "kubelet")),
                         cwd=config.get("WorkingDir") or "/")
    return run_container(write_config(tmp_path / "bundle", rootfs, spec))


def test_the_jobs_container_spec_builds_and_pushes_under_crun(
        plain_executor_image: str, registry: Registry, busybox_image: str,
        tmp_path: Path) -> None:
    pod = load("job.yaml")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    dest = f"{registry.host}/k8s/app:1.0.0"
    args = []
    for arg in container["args"]:
        # The one change: the destination is the test registry, which speaks plain HTTP.
        args.append(f"--destination={dest}" if arg.startswith("--destination=") else arg)
    args += ["--insecure", "--insecure-pull"]
    # The volumes: the context the init container cloned, the Secret's config.json.
    context = busybox_dockerfile(tmp_path / "context", busybox_image)
    sources = {"context": context, "docker-config": docker_config(tmp_path / "secret", registry)}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["docker-config"]["secret"]["items"][0]["path"] == "config.json"
    result = run_pod_container(container, args, plain_executor_image, sources, tmp_path, {
        "KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443",
        "HOSTNAME": "kiln-build-x7k2p"})
    assert result.exit_code == 0, result.stderr[-4000:]
    out = run_image(dest, workdir=tmp_path / "run")
    assert out.stdout.splitlines() == ["built in place by executor", "BusyBox"]


def test_the_warmer_cronjob_and_its_claim_validate_strictly() -> None:
    documents = list(yaml.safe_load_all((K8S / "warmer-cronjob.yaml").read_text()))
    assert [d["kind"] for d in documents] == ["PersistentVolumeClaim", "CronJob"]
    for document in documents:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_the_warmer_cronjobs_container_fills_the_volume_under_crun(
        plain_executor_image: str, registry: Registry, busybox_image: str,
        tmp_path: Path) -> None:
    cronjob = list(yaml.safe_load_all((K8S / "warmer-cronjob.yaml").read_text()))[1]
    container = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    # The one change: the images come from the test registry, which speaks plain HTTP.
    args = [a for a in container["args"] if not a.startswith("--image=")]
    args += [f"--image={busybox_image}", "--insecure-pull"]
    cache = tmp_path / "volume"
    cache.mkdir()
    sources = {"base-cache": cache,
               "docker-config": docker_config(tmp_path / "secret", registry)}
    result = run_pod_container(container, args, plain_executor_image, sources, tmp_path)
    assert result.exit_code == 0, result.stderr[-4000:]
    names = sorted(p.name for p in cache.iterdir())
    assert len(names) == 2 and names[1] == f"{names[0]}.json", names
