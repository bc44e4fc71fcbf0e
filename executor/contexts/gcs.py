"""``gs://BUCKET/OBJECT`` contexts: Cloud Storage's JSON API, authorised by google-auth.

google-auth is already kiln's (for GCR and Artifact Registry), and one streamed ``alt=media``
download is all a context needs, so this takes no extra client library. Credentials are
Application Default Credentials, as kaniko's client uses: ``GOOGLE_APPLICATION_CREDENTIALS``,
gcloud's, or the metadata server of GKE / GCE. ``STORAGE_EMULATOR_HOST`` (the variable Google's
own clients honour) points at an emulator, which is reached without credentials.
"""

from __future__ import annotations

import contextlib
import os
import urllib.parse
from collections.abc import Iterator
from typing import BinaryIO, cast

import requests

from executor.contexts.s3 import split_bucket_url
from executor.errors import ContextError

API = "https://storage.googleapis.com"
READ_ONLY = "https://www.googleapis.com/auth/devstorage.read_only"


def media_url(base: str, bucket: str, name: str) -> str:
    """The JSON API download URL of one object."""
    return (f"{base.rstrip('/')}/download/storage/v1/b/{urllib.parse.quote(bucket, safe='')}"
            f"/o/{urllib.parse.quote(name, safe='')}?alt=media")


@contextlib.contextmanager
def open_gcs_object(source: str) -> Iterator[BinaryIO]:
    """The content of the object ``source`` names, as a stream."""
    from executor.contexts.http import TIMEOUT, ResponseBody
    from executor.registry.transport import describe_connection_error

    bucket, name = split_bucket_url(source)
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    with _session(source, emulator is not None) as session:
        base = emulator if emulator and "://" in emulator else (
            f"http://{emulator}" if emulator else API)
        try:
            response = session.get(media_url(base, bucket, name), stream=True, timeout=TIMEOUT)
        except requests.RequestException as exc:
            raise ContextError(f"--context {source}: {describe_connection_error(exc)}") from None
        except Exception as exc:  # google.auth's RefreshError: a token that cannot be had
            raise ContextError(f"--context {source}: cannot get a Google token: {exc}") from None
        with response:
            if response.status_code in (401, 403):
                raise ContextError(f"--context {source}: access denied (HTTP "
                                   f"{response.status_code}; check the Google credentials)")
            if response.status_code == 404:
                raise ContextError(f"--context {source}: no such bucket or object")
            if response.status_code != 200:
                raise ContextError(f"--context {source}: HTTP {response.status_code}")
            response.raw.decode_content = True
            yield cast(BinaryIO, ResponseBody(response.raw, f"--context {source}"))


@contextlib.contextmanager
def _session(source: str, anonymous: bool) -> Iterator[requests.Session]:
    if anonymous:
        with requests.Session() as plain:
            yield plain
        return
    import google.auth
    import google.auth.exceptions
    from google.auth.transport.requests import AuthorizedSession

    try:
        credentials, _ = google.auth.default(scopes=[READ_ONLY])
    except google.auth.exceptions.DefaultCredentialsError:
        raise ContextError(f"--context {source}: no Google credentials found (set "
                           "GOOGLE_APPLICATION_CREDENTIALS, or run on GKE/GCE with a service "
                           "account)") from None
    with AuthorizedSession(credentials) as session:  # type: ignore[no-untyped-call]
        yield session
