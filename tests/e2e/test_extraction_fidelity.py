"""A base image with every whiteout and replacement case, pulled from a real registry and
extracted by a kiln build, is the same tree, file by file, as ``umoci unpack`` makes of it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.images import WHITEOUT_CASE_LAYERS, push_layout, write_oci_layout_from_layers
from tests.support.kiln import run_executor, write_context
from tests.support.registry import Registry
from tests.support.runtime import unpack_image
from tests.support.trees import metadata_tree

pytestmark = pytest.mark.e2e



@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("fidelity") / "layout"
    write_oci_layout_from_layers(directory, "latest", WHITEOUT_CASE_LAYERS, {"Cmd": ["/bin/sh"]})
    return directory


def push_zstd(layout: Path, ref: str) -> None:
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false",
                    "--dest-compress-format", "zstd", "--dest-compress",
                    f"oci:{layout}:latest", f"docker://{ref}"], check=True, capture_output=True)


@pytest.mark.parametrize("variant", ["oci-gzip", "docker-gzip", "oci-zstd"])
def test_kiln_extracts_the_pulled_image_as_umoci_unpacks_it(
        variant: str, layout: Path, registry: Registry, tmp_path: Path) -> None:
    ref = f"{registry.host}/fidelity/{variant}:latest"
    if variant == "oci-zstd":
        push_zstd(layout, ref)
    else:
        push_layout(layout, "latest", ref, format="v2s2" if variant == "docker-gzip" else None)
    context = write_context(tmp_path / "context", f"FROM {ref}\n")
    root = tmp_path / "root"
    result = run_executor(context, root, "--no-push", "--insecure-pull")
    assert result.exit_code == 0, result.stderr
    theirs = unpack_image(ref, tmp_path / "umoci")
    ours_tree = metadata_tree(root, dir_mtimes=False)
    theirs_tree = metadata_tree(theirs, dir_mtimes=False)
    assert sorted(ours_tree) == sorted(theirs_tree)
    for path, entry in theirs_tree.items():
        assert ours_tree[path] == entry, path
