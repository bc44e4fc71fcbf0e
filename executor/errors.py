"""The failures a user can cause or fix, each carrying the place it happened.

The CLI prints ``str(error)`` as one line and exits non-zero; anything that is not a
``KilnError`` (or a ``snapshot.errors.SnapshotError``) is a bug in kiln and keeps its traceback.
"""

from __future__ import annotations


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
    """An instruction that failed while being applied (a RUN exiting non-zero, a missing source)."""


class ContextError(KilnError):
    """The build context is missing or unreadable."""


class RegistryError(KilnError):
    """A registry refused or failed a request; the message names the registry and the status."""


class ImageError(KilnError):
    """An image whose manifest or config kiln cannot use (wrong platform, unknown media type)."""
