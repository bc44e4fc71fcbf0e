"""StageState: what one stage's instructions read and change while it is being built.

Instructions are functions of (state, instruction): they change the image config, the ARG scope
or the root filesystem through this object, and say whether the filesystem may have changed so
the build loop knows when to take a snapshot.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from executor.context import BuildContext
from executor.dockerfile.expand import ExpansionError, expand_word, expand_words
from executor.dockerfile.parse import Instruction
from executor.dockerfile.stages import BuildPlan, Stage
from executor.image.model import ImageConfig
from executor.sandbox import Sandbox
from snapshot.securepath import Ignores

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_SHELL = ("/bin/sh", "-c")


def clean_path(path: str) -> str:
    """``path`` absolute and clean, as Go's ``path.Clean("/" + path)``: ``//a/b/`` -> ``/a/b``."""
    cleaned = posixpath.normpath("/" + path)
    return "/" + cleaned.lstrip("/")


@dataclass
class StageState:
    """The mutable state of the stage being built."""

    stage: Stage
    plan: BuildPlan
    config: ImageConfig
    root: Path
    context: BuildContext
    sandbox: Sandbox
    created: str
    args: dict[str, str] = field(default_factory=dict)
    # ARGs given a value after an ENV of the same name: BuildKit adds an ARG's value to the
    # build environment, so the later of the two wins there (the config keeps the ENV).
    args_over_env: set[str] = field(default_factory=set)
    cmd_set: bool = False
    # Returns a directory holding the filesystem of a stage or image, for COPY --from.
    source_root: Callable[[Instruction, str], Path] | None = None
    # Paths never written (the build's ignore list); None in unit tests.
    ignore: Ignores | None = None
    # Where instructions keep temporary files: never inside the root (in place, /tmp is in it).
    scratch_dir: Path | None = None
    # kiln's state directory: RUN --mount=type=cache keeps its caches under it.
    kiln_dir: Path | None = None
    # --secret values by id: a RUN --mount=type=secret reads them, no layer ever holds them.
    secrets: Mapping[str, bytes] = field(default_factory=dict)
    # ADD URLs downloaded, with the sha256 of what came: provenance's resolvedDependencies.
    fetched: list[tuple[str, str]] = field(default_factory=list)

    @property
    def escape(self) -> str:
        return self.plan.dockerfile.escape

    @property
    def workdir(self) -> str:
        """The working directory, clean (the config keeps ``WORKDIR /tmp/`` as written)."""
        return clean_path(str(self.config.container.get("WorkingDir") or "/"))

    @property
    def shell(self) -> list[str]:
        return list(self.config.container.get("Shell") or DEFAULT_SHELL)

    def expansion_env(self) -> dict[str, str]:
        """ARGs overlaid by ENV: of an ARG and an ENV of the same name, the later one wins."""
        env = dict(self.args)
        for item in self.config.env:
            key, _, value = item.partition("=")
            if key not in self.args_over_env:
                env[key] = value
        return env

    def expand(self, inst: Instruction, word: str, env: Mapping[str, str] | None = None) -> str:
        try:
            return expand_word(word, self.expansion_env() if env is None else env, self.escape)
        except ExpansionError as exc:
            raise inst.error(str(exc)) from None

    def expand_words(self, inst: Instruction, text: str) -> list[str]:
        try:
            return expand_words(text, self.expansion_env(), self.escape)
        except ExpansionError as exc:
            raise inst.error(str(exc)) from None

    def absolute(self, path: str) -> str:
        """``path`` made absolute against WORKDIR, keeping a trailing slash."""
        joined = posixpath.join(self.workdir, path)
        cleaned = posixpath.normpath(joined)
        if cleaned.startswith("//"):
            cleaned = "/" + cleaned.lstrip("/")
        return cleaned + "/" if path.endswith("/") and cleaned != "/" else cleaned
