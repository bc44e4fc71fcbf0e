"""RUN --mount (cache, bind, tmpfs, secret) and --network: what the command sees, and that
nothing mounted (or made to mount it) lands in the image."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.support.built import Built, build

pytestmark = pytest.mark.e2e


def layer_names(built: Built) -> set[str]:
    return {name for layer in built.layers[1:] for name in layer}


def test_cache_mount_persists_between_runs_and_stays_out_of_the_image(
        tmp_path: Path, busybox_image: str) -> None:
    built = build(tmp_path, f"FROM {busybox_image}\n"
                  "RUN --mount=type=cache,target=/var/cache/app echo warm > /var/cache/app/f\n"
                  "RUN --mount=type=cache,target=/var/cache/app cat /var/cache/app/f > /seen\n"
                  "RUN --mount=type=cache,id=other,target=/c2 sh -c 'test ! -e /c2/f'\n")
    assert built.ok, built.run.stderr
    assert (built.root / "seen").read_text() == "warm\n"
    assert not (built.root / "var/cache/app").exists()
    assert not (built.root / "c2").exists()
    assert not any(name.startswith(("var/cache", "c2")) for name in layer_names(built))


def test_cache_mount_source_selects_a_subdirectory_of_the_cache(
        tmp_path: Path, busybox_image: str) -> None:
    built = build(tmp_path, f"FROM {busybox_image}\n"
                  "RUN --mount=type=cache,id=c,target=/c mkdir -p /c/sub && touch /c/sub/f /c/top\n"
                  "RUN --mount=type=cache,id=c,target=/c,source=sub ls /c > /sub-listing\n"
                  "RUN --mount=type=cache,id=c,target=/c,source=../sub/../sub/ ls /c > /clamped\n")
    assert built.ok, built.run.stderr
    assert (built.root / "sub-listing").read_text() == "f\n"
    assert (built.root / "clamped").read_text() == "f\n"  # '..' stays inside the cache


def test_cache_mount_source_must_exist_in_the_cache(tmp_path: Path, busybox_image: str) -> None:
    built = build(tmp_path, f"FROM {busybox_image}\n"
                  "RUN --mount=type=cache,id=c2,target=/c,source=../x true\n")
    assert built.run.exit_code == 1
    assert built.run.last_line == ("error building image: Dockerfile:2: RUN --mount=type=cache "
                                   "source '../x': /x: no such file or directory in the cache")


def test_a_mount_nested_in_another_mounts_target_builds(tmp_path: Path,
                                                        busybox_image: str) -> None:
    built = build(tmp_path, f"FROM {busybox_image}\n"
                  "RUN --mount=type=cache,target=/a --mount=type=tmpfs,target=/a/b "
                  "sh -c 'touch /a/b/in-tmpfs /a/in-cache'\n"
                  "RUN --mount=type=cache,target=/a sh -c 'ls /a > /cache-listing; ls /a/b > "
                  "/under-b'\n"
                  "RUN --mount=source=.,target=/ctx --mount=type=tmpfs,target=/ctx/t/u "
                  "sh -c 'touch /ctx/t/u/x && ls /ctx > /ctx-listing'\n", {"f.txt": "f\n"})
    assert built.ok, built.run.stderr
    # As BuildKit: the nested mount point is made in the cache and stays there; its tmpfs
    # content does not.
    assert (built.root / "cache-listing").read_text() == "b\nin-cache\n"
    assert (built.root / "under-b").read_text() == ""
    assert "t" in (built.root / "ctx-listing").read_text().split()
    assert not (tmp_path / "context" / "t").exists()  # never made in the context itself
    assert not (built.root / "a").exists() and not (built.root / "ctx").exists()


def test_a_nested_mount_point_never_follows_a_symlink_out_of_the_root(
        tmp_path: Path, busybox_image: str) -> None:
    host = tmp_path / "host-dir"
    host.mkdir()
    built = build(tmp_path, f"FROM {busybox_image}\n"
                  f"RUN --mount=type=cache,id=esc,target=/a ln -s {host} /a/b\n"
                  "RUN --mount=type=cache,id=esc,target=/a --mount=type=tmpfs,target=/a/b/c "
                  "true\n")
    assert built.run.exit_code == 1
    assert built.run.last_line.startswith("error building image: Dockerfile:3: ")
    assert list(host.iterdir()) == []


def test_bind_mount_of_the_context_is_read_only_by_default(tmp_path: Path,
                                                           busybox_image: str) -> None:
    files = {"src/a.txt": "from context\n"}
    built = build(tmp_path, f"FROM {busybox_image}\n"
                  "RUN --mount=source=src,target=/mnt/src cat /mnt/src/a.txt > /out\n"
                  "RUN --mount=target=/ctx sh -c 'touch /ctx/new 2>/dev/null; test $? -ne 0'\n",
                  files)
    assert built.ok, built.run.stderr
    assert (built.root / "out").read_text() == "from context\n"
    assert not (built.root / "mnt").exists()
    assert not (built.root / "ctx").exists()


def test_rw_bind_mount_writes_are_thrown_away(tmp_path: Path, busybox_image: str) -> None:
    built = build(tmp_path, f"FROM {busybox_image}\n"
                  "RUN --mount=target=/ctx,rw sh -c 'echo x > /ctx/a.txt && echo y > /ctx/new'\n"
                  "RUN --mount=target=/ctx cat /ctx/a.txt > /out\n", {"a.txt": "orig\n"})
    assert built.ok, built.run.stderr
    assert (built.root / "out").read_text() == "orig\n"
    assert (tmp_path / "context/a.txt").read_text() == "orig\n"
    assert not (tmp_path / "context/new").exists()


def test_bind_mount_from_a_stage(tmp_path: Path, busybox_image: str) -> None:
    built = build(tmp_path, f"FROM {busybox_image} AS build\nRUN echo built > /artifact\n"
                  f"FROM {busybox_image}\n"
                  "RUN --mount=from=build,source=/artifact,target=/in/artifact cp /in/artifact "
                  "/copied\n")
    assert built.ok, built.run.stderr
    assert (built.root / "copied").read_text() == "built\n"
    assert not (built.root / "in").exists()


def test_bind_mount_hides_dockerignored_files(tmp_path: Path, busybox_image: str) -> None:
    files = {"keep.txt": "k\n", "secret.env": "s\n", ".dockerignore": "*.env\n"}
    built = build(tmp_path, f"FROM {busybox_image}\n"
                  "RUN --mount=target=/ctx ls /ctx > /listing\n", files)
    assert built.ok, built.run.stderr
    assert "secret.env" not in (built.root / "listing").read_text()
    assert "keep.txt" in (built.root / "listing").read_text()


def test_tmpfs_mount_is_empty_writable_and_gone_after(tmp_path: Path,
                                                      busybox_image: str) -> None:
    built = build(tmp_path, f"FROM {busybox_image}\nRUN mkdir /keep && echo old > /keep/x\n"
                  "RUN --mount=type=tmpfs,target=/keep sh -c 'test ! -e /keep/x && echo t > "
                  "/keep/y'\n"
                  "RUN --mount=type=tmpfs,target=/scratch,size=1m echo t > /scratch/z\n")
    assert built.ok, built.run.stderr
    assert (built.root / "keep/x").read_text() == "old\n"  # a target that existed stays
    assert not (built.root / "keep/y").exists()
    assert not (built.root / "scratch").exists()


def test_secret_mount_reaches_the_command_and_nothing_else(tmp_path: Path,
                                                           busybox_image: str) -> None:
    secret = tmp_path / "token.txt"
    secret.write_text("s3cr3t-value")
    digest = hashlib.md5(b"s3cr3t-value").hexdigest()  # the Dockerfile must not hold the value
    built = build(tmp_path, f"FROM {busybox_image}\n"
                  "RUN --mount=type=secret,id=token test \"$(md5sum < /run/secrets/token | "
                  f"cut -d' ' -f1)\" = {digest} && touch /ok1\n"
                  "RUN --mount=type=secret,id=token,target=/etc/tok,mode=0444 "
                  "test \"$(stat -c %a /etc/tok)\" = 444 && touch /ok2\n"
                  "RUN --mount=type=secret,id=token,env=TOKEN test \"$(printf %s \"$TOKEN\" | "
                  f"md5sum | cut -d' ' -f1)\" = {digest} && touch /ok3\n"
                  "RUN --mount=type=secret,id=absent test ! -e /run/secrets/absent\n",
                  None, "--secret", f"id=token,src={secret}")
    assert built.ok, built.run.stderr
    for name in ("ok1", "ok2", "ok3"):
        assert (built.root / name).exists()
    assert not (built.root / "run/secrets").exists()
    assert not (built.root / "etc/tok").exists()
    assert b"s3cr3t-value" not in built.tar_path.read_bytes()
    for contents in built.contents:
        assert all(b"s3cr3t-value" not in data for data in contents.values())


def test_secret_from_an_environment_variable(tmp_path: Path, busybox_image: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_TEST_SECRET", "from-env")
    built = build(tmp_path, f"FROM {busybox_image}\n"
                  "RUN --mount=type=secret,id=tok,required=true "
                  "test \"$(cat /run/secrets/tok)\" = from-env\n",
                  None, "--secret", "id=tok,env=KILN_TEST_SECRET")
    assert built.ok, built.run.stderr


def test_network_none_has_no_interfaces_up(tmp_path: Path, busybox_image: str) -> None:
    built = build(tmp_path, f"FROM {busybox_image}\n"
                  "RUN --network=none sh -c 'grep -v -e lo: -e Inter -e face /proc/net/dev "
                  "> /ifaces || true'\n"
                  "RUN --network=host cat /proc/net/dev > /host-ifaces\n")
    assert built.ok, built.run.stderr
    assert (built.root / "ifaces").read_text() == ""


@pytest.mark.parametrize(("line", "message"), [
    ("RUN --mount=type=ssh true",
     "RUN --mount=type=ssh is not supported: kiln has no SSH agent forwarding"),
    ("RUN --mount=type=nfs,target=/x true",
     'unsupported mount type "nfs"'),
    ("RUN --mount=type=cache,colour=red,target=/x true",
     "RUN --mount: unexpected key 'colour' in 'colour=red'"),
    ("RUN --mount=type=cache true", "RUN --mount=type=cache needs target="),
    ("RUN --mount=type=secret,id=nope,required=true true",
     'secret "nope" is required but was not given (--secret id=nope,...)'),
    ("RUN --mount=source=../up,target=/x true",  # cleaned inside the context, as BuildKit
     "RUN --mount source '../up': no such file or directory in the build context"),
    ("RUN --mount=source=missing,target=/x true",
     "RUN --mount source 'missing': no such file or directory in the build context"),
    ("RUN --network=bridge true",
     'unsupported network mode "bridge": expected default, none or host'),
    ("RUN --security=insecure true",
     "RUN --security=insecure: kiln does not grant insecure entitlements"),
    ("RUN --mount=from=final,target=/x true", "circular dependency detected on stage: final"),
    ("RUN --foo=bar true", "unknown flag: --foo for RUN"),
])
def test_run_refuses(tmp_path: Path, busybox_image: str, line: str, message: str) -> None:
    built = build(tmp_path, f"FROM {busybox_image} AS final\n{line}\n")
    assert built.run.exit_code == 1
    assert built.run.last_line == f"error building image: Dockerfile:2: {message}"
