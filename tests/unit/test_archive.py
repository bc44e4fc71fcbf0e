"""ADD's archive extraction sees the build's ignore list from its destination directory."""

from __future__ import annotations

from pathlib import Path

from executor.instructions.archive import IgnoredBelow
from snapshot.ignore import IgnoreList


def test_entries_are_judged_by_their_path_in_the_root(tmp_path: Path) -> None:
    build = IgnoreList(root=tmp_path, paths=frozenset({"var/run", "kaniko"}))
    below_var = IgnoredBelow(build, tmp_path, tmp_path / "var")
    assert below_var.is_ignored("run/x") and not below_var.is_ignored("lib/x")
    assert below_var.may_ignore_in("") and not below_var.may_ignore_in("lib")
    at_root = IgnoredBelow(build, tmp_path, tmp_path)
    assert at_root.is_ignored("kaniko/secret") and at_root.may_ignore_in("")
    assert not at_root.may_ignore_in("etc")


def test_without_a_build_ignore_list_nothing_is_ignored(tmp_path: Path) -> None:
    nothing = IgnoredBelow(None, tmp_path, tmp_path / "app")
    assert not nothing.is_ignored("var/run") and not nothing.may_ignore_in("")
