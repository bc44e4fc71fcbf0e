"""The bench's split of a builder's own time, read from the stamped lines of its log."""

from __future__ import annotations

import pytest

from bench.builds import own_time_parts, run_command_seconds

# A two-stage kaniko log as the bench stamps it: the second stage unpacks the first again.
_KANIKO = [
    (0.1, "INFO[0000] Retrieving image manifest reg/debian"),
    (0.2, "INFO[0000] Unpacking rootfs as cmd RUN apt-get install curl requires it."),
    (3.2, "INFO[0003] Taking snapshot of full filesystem..."),
    (3.7, "INFO[0003] Running: [/bin/sh -c apt-get install curl]"),
    (5.0, "Get:1 http://deb.debian.org/debian bookworm/main curl"),
    (13.7, "INFO[0013] Taking snapshot of full filesystem..."),
    (15.7, "INFO[0015] Storing source image from stage 0 at path /kaniko/stages/0"),
    (16.0, "INFO[0016] Deleting filesystem..."),
    (17.2, "INFO[0017] Building stage 'curl' [idx: '1', base-idx: '0']"),
    (17.3, "INFO[0017] Unpacking rootfs as cmd RUN apt-get install git requires it."),
    (22.0, "INFO[0022] Taking snapshot of full filesystem..."),
    (22.5, "INFO[0022] Running: [/bin/sh -c apt-get install git]"),
    (40.5, "INFO[0040] Taking snapshot of full filesystem..."),
    (44.5, "INFO[0044] Skipping push to container registry due to --no-push flag"),
]


def test_own_time_is_split_by_the_lines_that_begin_each_part() -> None:
    parts = own_time_parts(_KANIKO, total=44.6)
    assert parts == pytest.approx({"start-up": 0.1, "pull": 0.1, "unpack": 7.7,
                                   "snapshot+layer": 7.0, "between stages": 1.6,
                                   "exit": 0.1})


def test_the_parts_add_up_to_wall_minus_the_run_commands() -> None:
    parts = own_time_parts(_KANIKO, total=44.6)
    runs = run_command_seconds(_KANIKO)
    assert parts is not None and runs is not None
    assert sum(parts.values()) == pytest.approx(44.6 - runs)


def test_a_log_without_a_run_has_no_split() -> None:
    assert own_time_parts(_KANIKO[:3], total=4.0) is None
