"""Config fields as BuildKit writes them for HEALTHCHECK, CMD and ENTRYPOINT edge forms."""

from __future__ import annotations

import pytest

from executor.dockerfile.parse import Instruction, parse_text
from executor.errors import DockerfileError
from executor.instructions.metadata import healthcheck_config


def _last(text: str) -> Instruction:
    return parse_text("FROM scratch\n" + text).instructions[-1]


def test_healthcheck_zero_flags_are_left_out() -> None:
    inst = _last("HEALTHCHECK --interval=0s --timeout=500ms --retries=0 CMD true\n")
    assert healthcheck_config(inst) == {"Test": ["CMD-SHELL", "true"], "Timeout": 500_000_000}


def test_healthcheck_nonzero_flags_are_kept() -> None:
    inst = _last("HEALTHCHECK --interval=1h2m3s --retries=2 CMD [\"/bin/true\"]\n")
    assert healthcheck_config(inst) == {"Test": ["CMD", "/bin/true"],
                                        "Interval": 3_723_000_000_000, "Retries": 2}


@pytest.mark.parametrize("line", ["CMD []", "ENTRYPOINT []", "CMD [\"\"]", "ENTRYPOINT",
                                  "CMD"])
def test_cmd_and_entrypoint_may_be_empty(line: str) -> None:
    assert _last(line + "\n").kind == line.split()[0]


@pytest.mark.parametrize("line", ["SHELL []", "VOLUME []", "RUN", "LABEL"])
def test_other_instructions_still_need_arguments(line: str) -> None:
    with pytest.raises(DockerfileError, match="requires at least one argument"):
        parse_text("FROM scratch\n" + line + "\n")


@pytest.mark.parametrize("flag", ["interval", "timeout", "start-period", "start-interval"])
def test_healthcheck_durations_under_a_millisecond_are_refused(flag: str) -> None:
    inst = _last(f"HEALTHCHECK --{flag}=500us CMD true\n")
    with pytest.raises(DockerfileError) as caught:
        healthcheck_config(inst)
    assert str(caught.value) == f'Dockerfile:2: Interval "{flag}" cannot be less than 1ms'


def test_healthcheck_one_millisecond_is_enough() -> None:
    inst = _last("HEALTHCHECK --start-interval=1ms CMD true\n")
    assert healthcheck_config(inst)["StartInterval"] == 1_000_000
