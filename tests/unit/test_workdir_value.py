"""WORKDIR's config value, as BuildKit's NormalizeWorkdir makes it (checked with BuildKit v0.32)."""

from __future__ import annotations

import pytest

from executor.instructions.metadata import workdir_value
from executor.instructions.state import clean_path


@pytest.mark.parametrize(("current", "path", "value"), [
    ("", "/tmp/", "/tmp/"),
    ("/tmp/", "sub/", "/tmp/sub"),
    ("", "/a//b/../c/", "/a//b/../c/"),
    ("/a//b/../c/", ".", "/a/c"),
    ("", "rel", "/rel"),
    ("/x/", "", "/x/"),
    ("", "", "/"),
    ("/srv", "../up", "/up"),
])
def test_workdir_value(current: str, path: str, value: str) -> None:
    assert workdir_value(current, path) == value


@pytest.mark.parametrize(("path", "clean"), [
    ("/data//x/", "/data/x"), ("//a", "/a"), ("", "/"), ("a/b", "/a/b"), ("/q/../r/./", "/r"),
])
def test_clean_path_is_gos_path_clean_of_an_absolute_path(path: str, clean: str) -> None:
    assert clean_path(path) == clean
