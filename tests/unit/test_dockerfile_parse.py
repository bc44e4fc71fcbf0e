"""Parsing Dockerfiles into instructions and stages, and the errors a user sees."""

import logging
import time
from pathlib import Path

import pytest

from executor.dockerfile.parse import onbuild_trigger, parse_dockerfile, parse_text
from executor.dockerfile.stages import plan_build
from executor.errors import DockerfileError
from executor.image.model import Platform


def plan(text: str, build_args: dict[str, str] | None = None, target: str | None = None):
    return plan_build(parse_text(text), build_args or {}, target, Platform())


def test_instructions_know_their_line() -> None:
    df = parse_text("FROM busybox\n\nRUN echo a \\\n  b\nCOPY a /b\n")
    assert [(i.kind, i.location.line) for i in df.instructions] == [
        ("FROM", 1), ("RUN", 3), ("COPY", 5)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("FROM busybox\nFOO bar\n", "Dockerfile:2: unknown instruction: FOO"),
        ("FROM busybox\nCOPY\n", "Dockerfile:2: COPY requires at least one argument"),
        ("FROM busybox\nRUN <<EOF\necho\n", "Dockerfile:2: syntax error: unterminated heredoc"),
        ("RUN echo\n", "Dockerfile:1: RUN must come after FROM (only ARG may come before the "
                       "first FROM)"),
        ("# escape=x\nFROM a\n", "Dockerfile:1: invalid escape token 'x' does not match ` or \\"),
        ("FROM a b\n", "Dockerfile:1: FROM requires either one or three arguments: FROM <image> "
                       "[AS <name>]"),
        ("FROM a AS 1x\n", 'Dockerfile:1: invalid name for build stage: "1x", name can\'t start '
                           "with a number or contain symbols"),
        ("FROM a AS x\nFROM b AS X\n", 'Dockerfile:2: duplicate stage name "X"'),
        ("FROM --foo=1 a\n", "Dockerfile:1: unknown flag: --foo for FROM"),
        # found by tests/fuzz: an escape-only line then blank lines to the end of the file
        ("FROM a\nLABEL a=b\n\\\n\n\n", "Dockerfile:3: unknown instruction: the line "
                                          "continues (ends in the escape character) but nothing "
                                          "follows"),
    ],
)
def test_malformed_dockerfiles_fail_at_file_and_line(text: str, message: str) -> None:
    with pytest.raises(DockerfileError) as caught:
        plan(text)
    assert str(caught.value) == message


def test_escape_directive_is_read_from_the_top() -> None:
    assert parse_text("# escape=`\nFROM a\n").escape == "`"
    assert parse_text("FROM a\n# escape=`\n").escape == "\\"


def test_global_args_expand_in_from_and_take_build_args() -> None:
    p = plan("ARG BASE=busybox\nARG TAG\nFROM ${BASE}:${TAG:-1.36}\n", {"TAG": "2"})
    assert p.stages[0].base == "busybox:2"
    assert plan("ARG BASE=busybox\nFROM $BASE\n").stages[0].base == "busybox"


def test_stage_names_are_case_insensitive_and_from_refers_to_them() -> None:
    p = plan("FROM busybox AS Builder\nRUN true\nFROM builder\nRUN true\n")
    assert p.stages[0].name == "builder"
    assert p.stages[1].base_stage == 0


def test_target_selects_a_stage_and_unknown_target_is_an_error() -> None:
    text = "FROM a AS one\nFROM b AS two\nFROM c\n"
    assert plan(text, target="TWO").target == 1
    with pytest.raises(DockerfileError, match='target stage "three" could not be found'):
        plan(text, target="three")


def test_platform_args_are_usable_in_from() -> None:
    p = plan("FROM busybox:$TARGETARCH\n")
    assert p.stages[0].base == "busybox:amd64"


@pytest.mark.parametrize(("text", "trigger"), [
    ("FROM a\nONBUILD RUN <<EOF\necho 1\necho 2\nEOF\n", "RUN <<EOF\necho 1\necho 2\nEOF"),
    ("FROM a\nonbuild  COPY <<A <<B /d/\na\nA\nb\nB\n", "COPY <<A <<B /d/\na\nA\nb\nB"),
    ("FROM a\nONBUILD RUN <<-X\n\tkept\n\tX\n", "RUN <<-X\n\tkept\nX"),
    ("# escape=`\nFROM a\nONBUILD RUN `\n  <<E cat\nx\nE\n", "RUN   <<E cat\nx\nE"),
    ("FROM a\nONBUILD RUN echo a \\\n  b\n", "RUN echo a   b"),
])
def test_an_onbuild_trigger_keeps_its_heredocs_as_buildkit_stores_them(
        text: str, trigger: str) -> None:
    assert onbuild_trigger(parse_text(text).instructions[1]) == trigger


@pytest.mark.parametrize("name", ["${name}", "$name", "1st", "a-b.c"])
def test_an_arg_name_is_taken_as_written(name: str) -> None:
    assert plan(f"ARG {name}=v\nFROM a\n").global_args == {name: "v"}


def test_a_blank_arg_name_is_refused() -> None:
    with pytest.raises(DockerfileError, match=r"^Dockerfile:1: ARG names can not be blank$"):
        plan("ARG =v\nFROM a\n")


@pytest.mark.parametrize("mount", ["from=$S,target=/m", "type=bind,FROM=${S},target=/m",
                                   '"from=$S",target=/m'])
def test_a_variable_in_run_mount_from_is_refused_in_any_stage(mount: str) -> None:
    with pytest.raises(DockerfileError, match=r"^Dockerfile:3: 'from' doesn't support variable "
                       r"expansion, define alias stage instead$"):
        plan(f"FROM a AS unused\nARG S=x\nRUN --mount={mount} true\nFROM a\n")


def test_a_dollar_at_the_end_of_run_mount_from_is_no_variable() -> None:
    plan("FROM a\nRUN --mount=from=a$,target=/m true\n")


def test_a_syntax_error_at_the_end_of_a_long_dockerfile_is_found_without_reparsing() -> None:
    text = "FROM a\n" + "RUN echo hi\n" * 4998 + "LABEL a\n"
    started = time.monotonic()
    with pytest.raises(DockerfileError) as caught:
        parse_text(text)
    assert time.monotonic() - started < 5
    assert str(caught.value) == "Dockerfile:5000: syntax error: LABEL must have two arguments"


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("FROM a\nRUN <<EOF\necho\nEOF\nLABEL a\n", 5),
        ("FROM a\nRUN <<-EOF\n\techo\n\tEOF\nLABEL a\n", 5),
        ("FROM a\nCOPY <<'EOT' /x\nLABEL q\nEOT\nLABEL y\n", 5),
        ("FROM a\nLABEL a \\\n  # comment\n\n  b=c\nLABEL x\n", 6),
        ("# escape=`\nFROM a\nLABEL a `\n b=c\nLABEL zz\n", 5),
        ("FROM a\nRUN echo\nRUN <<EOF\necho\n", 3),
    ],
)
def test_a_syntax_error_names_the_instruction_that_fails(text: str, line: int) -> None:
    with pytest.raises(DockerfileError) as caught:
        parse_text(text)
    assert str(caught.value).startswith(f"Dockerfile:{line}: syntax error: ")


@pytest.mark.parametrize("opener", ["${A:+", "${A:-", "${A"])
def test_substitutions_nested_past_the_limit_are_refused_at_their_line(opener: str) -> None:
    word = opener * 2000 + "x" + "}" * 2000
    started = time.monotonic()
    with pytest.raises(DockerfileError) as caught:
        parse_text(f"FROM a\nRUN echo \\\n  {word}\n")
    assert time.monotonic() - started < 1
    assert str(caught.value) == ("Dockerfile:3: variable substitutions (${...}) are nested "
                                 "more than 64 deep")


def test_a_dockerfile_over_the_size_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "Dockerfile"
    with path.open("wb") as out:
        out.truncate(1024 ** 3)  # sparse: 1 GB that costs no disk
    with pytest.raises(DockerfileError) as caught:
        parse_dockerfile(path)
    assert str(caught.value) == f"{path}: the Dockerfile is larger than kiln's limit of 10 MiB"


def test_a_latin1_comment_builds_as_in_buildkit_and_the_warning_names_its_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "Dockerfile"
    path.write_bytes(b"FROM a\n# caf\xe9\nLABEL a=caf\xe9\n")
    with caplog.at_level(logging.WARNING, logger="kiln"):
        parsed = parse_dockerfile(path)
    assert parsed.instructions[1].args == ("a", "caf\ufffd")
    assert "Dockerfile:2: byte 0xe9 is not UTF-8; it is read as U+FFFD" in caplog.text


def test_thousands_of_substitutions_in_one_instruction_are_refused_at_its_last_line() -> None:
    word = "\\\n".join(["${A}" * 1000] * 5)  # one word over five continued lines
    with pytest.raises(DockerfileError) as caught:
        parse_text(f"FROM a\nRUN echo {word}\n")
    assert str(caught.value) == ("Dockerfile:6: more than 4096 variable substitutions (${...}) "
                                 "in one instruction")


def test_many_substitutions_spread_over_instructions_are_fine() -> None:
    parse_text("FROM a\n" + "RUN echo ${A} ${B:-x}\n" * 5000)
