"""``s3://BUCKET/KEY`` contexts through boto3 (the ``s3`` extra), streamed from the object.

kaniko's settings, kept: the standard AWS credential chain (environment, shared config and
credentials files, ``AWS_PROFILE``, web identity, instance roles), ``S3_ENDPOINT`` for an
S3-compatible store (MinIO, Ceph, ...) and ``S3_FORCE_PATH_STYLE=true`` for stores that do not
serve bucket names as host names.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any, BinaryIO, cast

from executor.errors import ContextError

_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403",
           "InvalidToken", "ExpiredToken", "AllAccessDisabled"}


#: The object a bare ``s3://BUCKET`` or ``gs://BUCKET/`` names, as in kaniko.
DEFAULT_OBJECT = "context.tar.gz"


def split_bucket_url(source: str) -> tuple[str, str]:
    """``s3://bucket/a/b.tar.gz`` -> (``bucket``, ``a/b.tar.gz``); ``s3://bucket`` is
    ``(bucket, context.tar.gz)``, as kaniko reads it."""
    _, _, rest = source.partition("://")
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ContextError(f"--context {source}: expected {source.split('://')[0]}://BUCKET/PATH")
    return bucket, key or DEFAULT_OBJECT


@contextlib.contextmanager
def open_s3_object(source: str) -> Iterator[BinaryIO]:
    """The body of the object ``source`` names, as a stream."""
    bucket, key = split_bucket_url(source)
    try:
        import boto3
        import botocore.config
        import botocore.exceptions
    except ImportError:
        raise ContextError(f"--context {source}: S3 support is not installed "
                           "(pip install 'kiln[s3]')") from None
    force_path = os.environ.get("S3_FORCE_PATH_STYLE", "").lower() == "true"
    config = botocore.config.Config(s3={"addressing_style": "path"} if force_path else {},
                                    retries={"max_attempts": 3, "mode": "standard"})
    endpoint = os.environ.get("S3_ENDPOINT") or None
    try:
        client = boto3.client("s3", endpoint_url=endpoint, config=config)
        body: Any = client.get_object(Bucket=bucket, Key=key)["Body"]
    except botocore.exceptions.ClientError as exc:
        raise ContextError(f"--context {source}: {_client_error(exc)}") from None
    except botocore.exceptions.NoCredentialsError:
        raise ContextError(f"--context {source}: no AWS credentials found (set "
                           "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or use "
                           "a role)") from None
    except botocore.exceptions.BotoCoreError as exc:
        raise ContextError(f"--context {source}: {exc}") from None
    try:
        yield cast(BinaryIO, _Body(body, source, botocore.exceptions.BotoCoreError))
    finally:
        body.close()


def _client_error(exc: Any) -> str:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in ("NoSuchKey", "404"):
        return "no such object"
    if code == "NoSuchBucket":
        return "no such bucket"
    if code in _DENIED:
        return f"access denied ({code}; check the AWS credentials)"
    return f"{code or 'HTTP ' + str(status)}: {error.get('Message', '')}".rstrip(": ")


class _Body:
    """A StreamingBody whose read failures are ContextErrors."""

    def __init__(self, body: Any, source: str, errors: type[Exception]) -> None:
        self._body = body
        self._source = source
        self._errors = errors

    def read(self, size: int = -1) -> bytes:
        try:
            return cast(bytes, self._body.read(None if size < 0 else size))
        except (self._errors, OSError) as exc:
            raise ContextError(f"--context {self._source}: download failed: {exc}") from None
