"""COPY's flags as BuildKit reads them: --chmod symbolic, --parents, --exclude, --link, --from
globs, and the errors for what cannot work."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.built import build

pytestmark = pytest.mark.e2e


def mode(path: Path) -> int:
    return path.lstat().st_mode & 0o7777


def test_copy_chmod_symbolic_applies_to_each_files_mode(tmp_path: Path,
                                                        busybox_image: str) -> None:
    context = {"d/run.sh": "#!/bin/sh\n", "d/data.txt": "x\n"}
    (tmp_path / "context/d").mkdir(parents=True)
    built = build(tmp_path, f"FROM {busybox_image}\nRUN true\n"
                  "COPY --chmod=u+x,g-w,o= d /opt/d/\n", context)
    assert built.ok, built.run.stderr
    # write_context makes files 0644 (umask 022): u+x -> 0744, g-w keeps 04, o= -> 0
    assert mode(built.root / "opt/d/run.sh") == 0o740
    assert mode(built.root / "opt/d/data.txt") == 0o740


def test_copy_parents_keeps_the_path_below_the_context(tmp_path: Path,
                                                       busybox_image: str) -> None:
    files = {"a/b/one.txt": "1\n", "a/c/two.txt": "2\n", "a/c/skip.md": "no\n"}
    built = build(tmp_path, f"FROM {busybox_image}\nCOPY --parents a/*/*.txt /out/\n", files)
    assert built.ok, built.run.stderr
    assert (built.root / "out/a/b/one.txt").read_text() == "1\n"
    assert (built.root / "out/a/c/two.txt").read_text() == "2\n"
    assert not (built.root / "out/a/c/skip.md").exists()


def test_copy_parents_keeps_only_what_follows_the_pivot(tmp_path: Path,
                                                        busybox_image: str) -> None:
    files = {"src/pkg/x/one.go": "1\n"}
    built = build(tmp_path, f"FROM {busybox_image}\nCOPY --parents src/./pkg/x/one.go /out/\n",
                  files)
    assert built.ok, built.run.stderr
    assert (built.root / "out/pkg/x/one.go").read_text() == "1\n"
    assert not (built.root / "out/src").exists()


def test_copy_exclude_leaves_out_matching_paths(tmp_path: Path, busybox_image: str) -> None:
    files = {"app/main.py": "m\n", "app/notes.md": "n\n", "app/sub/deep.md": "d\n",
             "app/sub/keep.py": "k\n"}
    built = build(tmp_path, f"FROM {busybox_image}\n"
                  "COPY --exclude=*.md --exclude=**/*.md app /app/\n", files)
    assert built.ok, built.run.stderr
    assert sorted(p.relative_to(built.root / "app").as_posix()
                  for p in (built.root / "app").rglob("*")) == ["main.py", "sub", "sub/keep.py"]


def test_copy_link_puts_every_parent_in_its_layer_as_if_created(tmp_path: Path,
                                                                 busybox_image: str) -> None:
    built = build(tmp_path, f"FROM {busybox_image}\n"
                  "RUN mkdir -p /opt/app && chown 1000:1000 /opt/app && chmod 0700 /opt/app\n"
                  "COPY --link f.txt /opt/app/new/\n", {"f.txt": "f\n"})
    assert built.ok, built.run.stderr
    layer = built.layers[-1]
    for name in ("opt", "opt/app", "opt/app/new"):
        assert (layer[name].uid, layer[name].gid, layer[name].mode) == (0, 0, 0o755), name
    assert (built.root / "opt/app/new/f.txt").read_text() == "f\n"


def test_copy_link_file_named_as_a_directory_replaces_it_and_says_so(
        tmp_path: Path, busybox_image: str) -> None:
    built = build(tmp_path, f"FROM {busybox_image}\nRUN mkdir /data && touch /data/old\n"
                  "COPY --link f.txt /data\n", {"f.txt": "f\n"})
    assert built.ok, built.run.stderr
    assert (built.root / "data").read_text() == "f\n"
    assert "/data is a directory in the image; COPY --link writes the file in its place" \
        in built.run.stderr


def test_copy_from_a_stage_keeps_owners_and_writes_hard_links_as_links(
        tmp_path: Path, busybox_image: str) -> None:
    built = build(tmp_path, f"FROM {busybox_image} AS build\n"
                  "RUN mkdir /out && echo x > /out/a && ln /out/a /out/b && chown 65:66 /out/a\n"
                  f"FROM {busybox_image}\nCOPY --from=build /out /app\n")
    assert built.ok, built.run.stderr
    first, second = (built.root / "app/a").stat(), (built.root / "app/b").stat()
    assert (first.st_uid, first.st_gid) == (65, 66)
    assert (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)
    layer = built.layers[-1]
    linked = [info for name, info in layer.items() if name.startswith("app/")
              and info.islnk()]
    assert [(info.name, info.linkname) for info in linked] == [("app/b", "app/a")]


def test_copy_link_through_an_image_symlink_is_refused(tmp_path: Path,
                                                       busybox_image: str) -> None:
    built = build(tmp_path, f"FROM {busybox_image}\nRUN ln -s /opt /linked\n"
                  "COPY --link f.txt /linked/\n", {"f.txt": "f\n"})
    assert built.run.exit_code == 1
    assert built.run.last_line == (
        "error building image: Dockerfile:3: COPY --link: the destination passes through "
        "/linked, a symlink in the image; BuildKit would replace the link with a directory. "
        "Use COPY without --link")


def test_copy_from_a_stage_with_a_glob(tmp_path: Path, busybox_image: str) -> None:
    built = build(tmp_path, f"FROM {busybox_image} AS build\n"
                  "RUN mkdir -p /out && echo a > /out/a.txt && echo b > /out/b.log\n"
                  f"FROM {busybox_image}\nCOPY --from=build /out/*.txt /got/\n")
    assert built.ok, built.run.stderr
    assert sorted(p.name for p in (built.root / "got").iterdir()) == ["a.txt"]


def test_copy_from_a_later_stage_fails_as_in_buildkit(tmp_path: Path,
                                                      busybox_image: str) -> None:
    built = build(tmp_path, f"FROM {busybox_image} AS final\nCOPY --from=later /later /got\n"
                  f"FROM {busybox_image} AS later\nRUN echo later > /later\n",
                  None, "--target", "final")
    assert not built.ok
    assert built.run.last_line == (
        'error building image: Dockerfile:2: cannot copy from stage "later", it needs to be '
        'defined before current stage "final"')


def test_copy_chown_owns_the_parents_it_creates(tmp_path: Path, busybox_image: str) -> None:
    built = build(tmp_path, f"FROM {busybox_image}\nCOPY --chown=1000:1000 f.txt /new/deep/\n",
                  {"f.txt": "f\n"})
    assert built.ok, built.run.stderr
    for rel in ("new", "new/deep", "new/deep/f.txt"):
        info = (built.root / rel).stat()
        assert (info.st_uid, info.st_gid) == (1000, 1000), rel


@pytest.mark.parametrize(("dockerfile", "message"), [
    ("FROM {base} AS one\nCOPY --from=one /etc/passwd /x\n",
     "Dockerfile:2: circular dependency detected on stage: one"),
    ("FROM {base} AS a\nCOPY --from=b /etc/passwd /x\nFROM {base} AS b\n"
     "RUN --mount=from=a,target=/a true\n",
     "Dockerfile:2: circular dependency detected on stage: a"),
    ("FROM {base}\nCOPY ../outside /x\n",
     "Dockerfile:2: COPY source '../outside' is outside the build context"),
    ("FROM {base}\nCOPY --chmod=u+q f.txt /x\n",
     'Dockerfile:2: invalid --chmod value "u+q"'),
    ("FROM {base}\nCOPY --from=a --from=b f.txt /x\n",
     "Dockerfile:2: duplicate flag specified: --from"),
    ("FROM {base}\nCOPY --link=perhaps f.txt /x\n",
     "Dockerfile:2: invalid value 'perhaps' for --link: expected true or false"),
    ("FROM {base}\nCOPY --keep-git-dir f.txt /x\n",
     "Dockerfile:2: unknown flag: --keep-git-dir for COPY"),
    ("FROM {base}\nCOPY a.txt b.txt /x\n",
     "Dockerfile:2: When using COPY with more than one source file, the destination must be a "
     "directory and end with a /"),
    ("FROM {base}\nCOPY f.txt\n", "Dockerfile:2: COPY requires at least two arguments, but got 1"),
])
def test_copy_refuses(tmp_path: Path, busybox_image: str, dockerfile: str,
                      message: str) -> None:
    built = build(tmp_path, dockerfile.format(base=busybox_image),
                  {"f.txt": "f\n", "a.txt": "a\n", "b.txt": "b\n"})
    assert built.run.exit_code == 1
    assert built.run.last_line == f"error building image: {message}"


_TWO_STAGES = (
    "FROM {base} AS build\n"
    "RUN mkdir -p /out/sub /var/run /var/lib/app && echo one > /out/sub/f && ln -s sub/f /out/link"
    " && echo pid > /var/run/app.pid && echo state > /var/lib/app/s && chmod 700 /out/sub\n"
    "FROM {base}\n"
    "ARG SRC=build\n"
    "COPY --from={ref} /out /copied/out\n"
    "COPY --from={ref} /var /copied/var\n"
    "COPY --from={ref} /proc /copied/proc\n"
)


def test_copy_from_a_stage_moved_out_of_the_root_is_what_extracting_it_gives(
        tmp_path: Path, busybox_image: str) -> None:
    """A stage copied from later is moved out of the root, not extracted again; /var/run and
    /proc, which the build ignores, come from the image as an extraction would give them.
    ``--from=${SRC}`` is not resolved before the build, so it takes the extracting path: the
    two images must be the same, layer for layer (--reproducible: the RUN's files have the
    times of their own build)."""
    moved = build(tmp_path / "moved", _TWO_STAGES.format(base=busybox_image, ref="build"),
                  {}, "--verbosity", "debug", "--reproducible")
    extracted = build(tmp_path / "extracted",
                      _TWO_STAGES.format(base=busybox_image, ref="${SRC}"), {},
                      "--verbosity", "debug", "--reproducible")
    assert moved.ok and extracted.ok, moved.run.stderr + extracted.run.stderr
    assert "filesystem moved to" in moved.run.stderr
    assert "filesystem moved to" not in extracted.run.stderr
    assert moved.config["rootfs"]["diff_ids"] == extracted.config["rootfs"]["diff_ids"]
    assert (moved.root / "copied/out/sub/f").read_text() == "one\n"
    assert not (moved.root / "copied/var/run/app.pid").exists()  # ignored in the build stage


def test_a_reincluded_file_never_goes_through_an_image_symlink_out_of_the_root(
        tmp_path: Path) -> None:
    # src/pkg is excluded but entered (!src/pkg/util.go): its directory is not copied, only
    # the file; /app/pkg in the image is a symlink to a host path, which must not receive it.
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "context/links").mkdir(parents=True)
    (tmp_path / "context/links/pkg").symlink_to(outside)
    files = {".dockerignore": "src/pkg\n!src/pkg/util.go\n", "src/pkg/util.go": "go\n",
             "src/main.go": "main\n"}
    built = build(tmp_path, "FROM scratch\nCOPY links/ /app/\nCOPY src/ /app/\n", files)
    assert list(outside.iterdir()) == []
    assert not built.ok
    assert "Dockerfile:3" in built.run.stderr and "Traceback" not in built.run.stderr
