"""File bytes in an S3-compatible bucket (``--blobs s3://bucket/prefix``), through obstore.

Credentials come from the usual AWS environment variables (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``/``AWS_DEFAULT_REGION``); the endpoint of
a store that is not AWS from ``AWS_ENDPOINT_URL``, the AWS SDKs' standard variable. A plain-http
endpoint is refused unless ``FREIGHT_BLOBS_ALLOW_HTTP=1`` asks for it (keys and file bytes would cross
the network in the clear).

Both directions stream: a writer buffers at most ``part_bytes`` × ``max_concurrency`` and uploads a
larger blob as a multipart upload, which only becomes visible under its key when ``commit`` completes
it (a reader never sees half a file; an aborted or crashed upload leaves no object under the key); a
reader fetches ranges of ``read_bytes`` as it is read. Why obstore and not s3fs: docs/deployment.md.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlparse

import obstore
from obstore.exceptions import BaseError as ObjectStoreError
from obstore.exceptions import NotFoundError
from obstore.store import S3Store

from freight.domain.errors import ConfigError, StoreError, StoreUnavailable

log = logging.getLogger("freight.store")

if TYPE_CHECKING:
    from obstore import ReadableFile, WritableFile
    from obstore.store import S3Config

_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
#: Size of one part of a multipart upload (S3's minimum part is 5 MiB).
PART_BYTES = 8 * 1024 * 1024
#: Parts uploaded at once: a writer holds at most about PART_BYTES × this in memory.
MAX_CONCURRENCY = 4
#: Bytes fetched by one ranged GET while a blob is read.
READ_BYTES = 4 * 1024 * 1024
ALLOW_HTTP_ENV = "FREIGHT_BLOBS_ALLOW_HTTP"
#: obstore raises its NotFoundError or the builtin FileNotFoundError for a missing object.
_NOT_FOUND = (NotFoundError, FileNotFoundError)


def _why(exc: BaseException) -> str:
    """obstore's message without its multi-line debug dump."""
    return str(exc).split("\n\nDebug source")[0].strip()


#: What a failing S3 call raises: obstore's errors, and OSError from its file-like reader and writer.
_FAILED = (ObjectStoreError, OSError)


def _unavailable(what: str, exc: BaseException) -> StoreUnavailable:
    """The bucket did not do ``what``: the detail to the log, a 503 that says so (and no more) to the client."""
    log.error("the S3 file store failed to %s: %s", what, _why(exc), extra={"event": "blob_store_failed"})
    return StoreUnavailable("The server's file store did not answer; nothing this request sent was kept. "
                            "Try again later.")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> (bucket, prefix without slashes at its ends)."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ConfigError(f"--blobs {url!r}: expected s3://BUCKET or s3://BUCKET/PREFIX")
    if parsed.query or parsed.fragment:
        raise ConfigError(f"--blobs {url!r}: no query or fragment allowed in an s3:// location")
    return parsed.netloc, parsed.path.strip("/")


class _Reader(io.RawIOBase):
    """obstore's buffered ranged reader as a raw stream (wrapped in a BufferedReader: IO[bytes])."""

    def __init__(self, inner: ReadableFile):
        self._inner = inner

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        try:
            data = self._inner.read(len(view))
        except _FAILED as exc:
            raise _unavailable("read a blob", exc) from exc
        n = len(data)
        view[:n] = memoryview(data)
        return n

    def close(self) -> None:
        if not self.closed:
            self._inner.close()
        super().close()


class S3BlobWriter:
    def __init__(self, store: S3Store, key: str):
        try:
            self._file: WritableFile | None = obstore.open_writer(
                store, key, buffer_size=PART_BYTES, max_concurrency=MAX_CONCURRENCY)
        except _FAILED as exc:
            raise _unavailable(f"create blob {key}", exc) from exc
        self._key = key
        self._size = 0

    @property
    def size(self) -> int:
        return self._size

    def write(self, data: bytes) -> None:
        assert self._file is not None, "write after commit/abort"
        try:
            self._file.write(data)
        except _FAILED as exc:
            self.abort()
            raise _unavailable(f"write blob {self._key}", exc) from exc
        self._size += len(data)

    def commit(self) -> int:
        assert self._file is not None, "commit after commit/abort"
        file, self._file = self._file, None
        try:
            file.close()  # completes the multipart upload (or PUTs a small blob): visible only now
        except _FAILED as exc:
            raise _unavailable(f"commit blob {self._key}", exc) from exc
        return self._size

    def abort(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            # Leaving the writer with an exception aborts the multipart upload: nothing under the key.
            try:
                file.__exit__(StoreError, StoreError("aborted"), None)
            except _FAILED:
                pass  # the bucket's lifecycle rule for incomplete uploads is the backstop


class S3BlobStore:
    """The ``BlobStore`` port on an S3-compatible bucket (one object per blob, under the prefix)."""

    def __init__(self, url: str, *, env: Mapping[str, str] | None = None):
        import os

        environ = os.environ if env is None else env
        self.url = url
        bucket, prefix = parse_s3_url(url)
        config: S3Config = {}
        variable = "AWS_ENDPOINT_URL_S3" if environ.get("AWS_ENDPOINT_URL_S3") else "AWS_ENDPOINT_URL"
        endpoint = environ.get(variable)
        allow_http = _truthy(environ.get(ALLOW_HTTP_ENV))
        if endpoint:
            scheme = urlparse(endpoint).scheme
            if scheme not in ("http", "https"):
                raise ConfigError(f"{variable} {endpoint!r}: expected an http:// or https:// URL")
            if scheme == "http" and not allow_http:
                raise ConfigError(
                    f"{variable} {endpoint!r} is plain http: credentials and file bytes would cross the "
                    f"network unencrypted. Use https, or set {ALLOW_HTTP_ENV}=1 to allow it (e.g. a store on "
                    "loopback or a trusted network).")
            config["endpoint"] = endpoint
        # The usual variables, read from ``environ`` (obstore alone would read only the process's).
        if environ.get("AWS_ACCESS_KEY_ID") and environ.get("AWS_SECRET_ACCESS_KEY"):
            config["access_key_id"] = environ["AWS_ACCESS_KEY_ID"]
            config["secret_access_key"] = environ["AWS_SECRET_ACCESS_KEY"]
            if environ.get("AWS_SESSION_TOKEN"):
                config["session_token"] = environ["AWS_SESSION_TOKEN"]
        config["region"] = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        try:
            self._store = S3Store(bucket, prefix=prefix or None, config=config,
                                  client_options={"allow_http": allow_http})
        except ObjectStoreError as exc:
            raise ConfigError(f"--blobs {url!r}: {_why(exc)}") from exc

    @staticmethod
    def _key(key: str) -> str:
        if not _KEY_RE.match(key):
            raise StoreError(f"invalid blob key {key!r}")
        return key

    def check(self) -> None:
        """Fail at start-up, with a clear message, when the bucket cannot be listed."""
        try:
            next(iter(obstore.list(self._store, chunk_size=1)), None)
        except ObjectStoreError as exc:
            raise ConfigError(f"--blobs {self.url}: the bucket cannot be reached or listed: {_why(exc)}") from exc

    def writer(self, key: str) -> S3BlobWriter:
        return S3BlobWriter(self._store, self._key(key))

    def open(self, key: str) -> IO[bytes]:
        try:
            inner = obstore.open_reader(self._store, self._key(key), buffer_size=READ_BYTES)
        except _NOT_FOUND as exc:
            raise StoreError(f"cannot open blob {key}: {_why(exc)}") from exc
        except _FAILED as exc:
            raise _unavailable(f"open blob {key}", exc) from exc
        return io.BufferedReader(_Reader(inner), buffer_size=READ_BYTES)

    def size(self, key: str) -> int:
        try:
            return int(obstore.head(self._store, self._key(key))["size"])
        except _NOT_FOUND as exc:
            raise FileNotFoundError(f"no blob {key}") from exc
        except _FAILED as exc:
            raise _unavailable(f"stat blob {key}", exc) from exc

    def delete(self, key: str) -> None:
        try:
            obstore.delete(self._store, self._key(key))
        except _NOT_FOUND:
            pass
        except _FAILED as exc:
            raise _unavailable(f"delete blob {key}", exc) from exc

    def exists(self, key: str) -> bool:
        try:
            obstore.head(self._store, self._key(key))
        except _NOT_FOUND:
            return False
        except _FAILED as exc:
            raise _unavailable(f"stat blob {key}", exc) from exc
        return True

    def keys(self, older_than: float | None = None) -> list[str]:
        found: list[str] = []
        try:
            for chunk in obstore.list(self._store):
                found.extend(meta["path"] for meta in chunk if _KEY_RE.match(meta["path"])
                             and (older_than is None or meta["last_modified"].timestamp() < older_than))
        except _FAILED as exc:
            raise _unavailable("list blobs", exc) from exc
        return found

    # An object store has no disk of ours to fill: there is no reserve to give back or take again.
    def release_reserve(self) -> bool:
        return False

    def restore_reserve(self) -> bool:
        return False
