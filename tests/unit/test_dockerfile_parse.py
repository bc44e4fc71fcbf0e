"""Parsing Dockerfiles into instructions and stages, and the errors a user sees."""

import pytest

from executor.dockerfile.parse import onbuild_trigger, parse_text
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
