"""The failures a user can cause or fix, each carrying the place it happened.

The CLI prints ``str(error)`` as one line and exits non-zero; anything that is not a
``KilnError`` (or a ``snapshot.errors.SnapshotError``) is a bug in kiln and keeps its traceback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class KilnError(Exception):
    """A failure the user can act on. ``str()`` is one line naming the cause and the place."""

    exit_code = 1


class OptionsError(KilnError):
    """A flag or flag combination that cannot work (``--destination`` missing, bad ``--root``)."""


class DockerfileError(KilnError):
    """A Dockerfile that cannot be built as written; the message starts with ``file:line:``."""

    def __init__(self, location: str, message: str) -> None:
        super().__init__(f"{location}: {message}")
        self.location = location


class BuildStepError(DockerfileError):
    """An instruction that failed while being applied (a RUN exiting non-zero, a missing source).

    ``exit_code`` is the executor's: a RUN's own exit code, passed on as kaniko does, so a CI
    step can tell ``exit 7`` from a kiln failure.
    """

    def __init__(self, location: str, message: str, exit_code: int = 1) -> None:
        super().__init__(location, message)
        self.exit_code = exit_code


@contextlib.contextmanager
def at_step(location: str) -> Iterator[None]:
    """Every failure of an instruction, whatever raised it (a layer written to a full disk, a
    context file that cannot be copied), carries the instruction's ``file:line``."""
    from snapshot.errors import SnapshotError, describe_os_error

    try:
        yield
    except DockerfileError:
        raise
    except KilnError as exc:
        raise BuildStepError(location, str(exc), exc.exit_code) from exc
    except SnapshotError as exc:
        raise BuildStepError(location, str(exc)) from exc
    except OSError as exc:
        raise BuildStepError(location, describe_os_error(exc)) from exc


class ContextError(KilnError):
    """The build context is missing or unreadable."""


class RegistryError(KilnError):
    """A registry refused or failed a request; the message names the registry and the status."""


class ImageError(KilnError):
    """An image whose manifest or config kiln cannot use (wrong platform, unknown media type)."""
