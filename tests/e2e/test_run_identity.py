"""Who a RUN runs as where the image has no users at all, as BuildKit and kaniko run it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.built import build

pytestmark = pytest.mark.e2e


def test_a_run_in_a_scratch_stage_with_a_static_shell_runs_as_root(
        tmp_path: Path, busybox_image: str) -> None:
    dockerfile = (f"FROM {busybox_image} AS tools\n"
                  "FROM scratch\n"
                  "COPY --from=tools /bin/ /bin/\n"
                  'RUN mkdir /out && echo "$(id -u):$(id -g) $HOME" > /out/who\n')
    built = build(tmp_path, dockerfile)
    assert built.ok, built.run.stderr
    assert built.contents[-1]["out/who"] == b"0:0 /\n"


def test_user_root_alone_without_passwd_fails_at_its_run(tmp_path: Path,
                                                         busybox_image: str) -> None:
    built = build(tmp_path, f"FROM {busybox_image}\nRUN rm /etc/passwd\nUSER root\nRUN true\n")
    assert not built.ok
    assert built.run.last_line == ("error building image: Dockerfile:4: unable to find user "
                                   "root: no matching entries in passwd file")
