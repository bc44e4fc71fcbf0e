"""The .dockerignore matcher, with Docker's pattern rules."""

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from executor.context import BuildContext, DockerIgnore
from executor.errors import ContextError


@pytest.mark.parametrize(
    ("patterns", "path", "excluded"),
    [
        ("*.md", "README.md", True),
        ("*.md", "docs/README.md", False),
        ("**/*.md", "docs/README.md", True),
        ("**/*.md", "README.md", True),
        ("docs", "docs/a/b.txt", True),
        ("/docs", "docs/x", True),
        ("temp?", "temp1", True),
        ("temp?", "temp12", False),
        ("*\n!keep.md", "keep.md", False),
        ("*\n!keep.md", "other.md", True),
        ("!keep.md\n*", "keep.md", True),
        ("node_modules/**", "node_modules/a/b", True),
        ("a/**/z", "a/b/c/z", True),
        ("a/**/z", "a/z", True),
        ("[ab].txt", "a.txt", True),
        # Docker hands classes to Go's regexp, where '!' is a member and '^' negates.
        ("[!ab].txt", "a.txt", True),
        ("[!ab].txt", "c.txt", False),
        ("[^ab].txt", "c.txt", True),
        ("[a-c]x", "bx", True),
        ("a**b", "ab", True),
        ("a**b", "axb", False),
        ("a**b", "ax/b", True),
        ("**", "any/thing", True),
        ("**/x", "x", True),
        ("build/**", "build/a/b", True),
        ("build**", "buildx", True),
        (" #x", "#x", True),
        ("/!a\\*", "a*", False),
        ("*\n/!a", "a", False),
        ("# comment", "# comment", False),
        ("./build", "build/out", True),
    ],
)
def test_dockerignore_patterns(patterns: str, path: str, excluded: bool) -> None:
    assert DockerIgnore.from_text(patterns).excluded(path) is excluded


_name = st.from_regex(r"[a-z0-9_]{1,6}", fullmatch=True)


@given(st.lists(_name, min_size=1, max_size=4))
def test_a_directory_pattern_excludes_everything_below_it(parts: list[str]) -> None:
    ignore = DockerIgnore.from_text(parts[0])
    assert ignore.excluded("/".join(parts))


@given(st.lists(_name, min_size=1, max_size=4))
def test_reinclusion_after_exclusion_wins(parts: list[str]) -> None:
    path = "/".join(parts)
    assert not DockerIgnore.from_text(f"{path}\n!{path}").excluded(path)


@pytest.mark.parametrize(
    ("patterns", "directory", "entered"),
    [
        ("build/**\n!build/keep/**", "build", True),
        ("build/**\n!build/keep/**", "build/keep", True),
        ("build/**\n!build/keep/**", "other", False),
        ("build", "build", False),
        ("build\n!docs/x", "build", False),
    ],
)
def test_an_excluded_directory_is_entered_only_when_a_reinclusion_starts_below_it(
        patterns: str, directory: str, entered: bool) -> None:
    assert DockerIgnore.from_text(patterns).reincludes_below(directory) is entered


def test_an_ignore_file_over_the_size_limit_is_refused_before_it_is_read(
        tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    with (tmp_path / ".dockerignore").open("wb") as out:
        out.truncate(1024 ** 3)  # sparse: 1 GB that costs no disk
    with pytest.raises(ContextError, match=r"\.dockerignore: larger than kiln's limit of 10 MiB"):
        BuildContext.load(tmp_path, tmp_path / "Dockerfile")
