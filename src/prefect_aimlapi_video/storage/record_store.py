"""Where submission records live: a local directory (one host) or `s3://bucket/prefix` (every worker).

A record is the write-ahead log of one logical generation (see `submission.protocol`). Whatever the
backend, every write is a compare-and-swap, so two attempts that read the same record can never
both act on it:

* create only if absent: `os.link` of a fully written temporary file (atomic, and a reader never
  sees half a record) / S3 `PutObject` with `If-None-Match: *`;
* replace only if unchanged since read: under an exclusive `flock` of the directory, compare and
  rename / S3 `PutObject` with `If-Match: <etag>`.

A version is an opaque string: a revision number locally (the file's first line, raised by one on
every write), the ETag on S3 (records carry their own `updated_at`, so no two writes of one record
have the same content).

A store that only pretends to compare and swap (several S3-compatible stores and proxies ignore
`If-None-Match` or `If-Match` and simply write) would let two hosts both POST, and a spend cap
lose updates. So `check()` proves it before first use, on a sentinel record (`cas-check`): a
second create of it must be refused, a replace at a wrong version must be refused, and a replace
at the current version must succeed. A store that fails any of the three is refused by name
before anything is paid. A proof holds for the life of the process (`_PROVEN`).

The local store is atomic between processes of one host (flock on a local filesystem); it is not
a shared store for several hosts, even on NFS. For workers on several hosts (ECS, Kubernetes,
several process workers), use `s3://`: S3's conditional writes are atomic for every client.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from prefect_aimlapi_video.api.errors import InvalidInputError, TransientApiError
from prefect_aimlapi_video.storage.s3 import s3_client

SUBMISSIONS_ENV = "AIMLAPI_SUBMISSIONS_DIR"
_LOST_RACE = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409", "NoSuchKey", "404"}

Versioned = tuple[bytes, str]  # (content, version)
CAS_SENTINEL = "cas-check"
_WRONG_VERSIONS = {"local": "0", "s3": '"00000000000000000000000000000000"'}  # never a real version
_PROVEN: set[str] = set()  # locations whose compare-and-swap this process has proven


def default_location() -> str:
    """`AIMLAPI_SUBMISSIONS_DIR`, else `$PREFECT_HOME/aimlapi/submissions` (this host only)."""
    configured = os.environ.get(SUBMISSIONS_ENV)
    if configured:
        return configured
    from prefect.settings import PREFECT_HOME

    return str(Path(PREFECT_HOME.value()) / "aimlapi" / "submissions")


class RecordStore(ABC):
    """Records by key, each written only by compare-and-swap."""

    location: str
    kind: str  # "local" or "s3"

    @property
    def shared(self) -> bool:
        """True when every worker on every host sees the same records."""
        return False

    @abstractmethod
    async def read(self, key: str) -> Versioned | None: ...

    @abstractmethod
    async def create(self, key: str, data: bytes) -> str | None:
        """Store `data` under a new key; None if the key exists (someone else got there first)."""

    @abstractmethod
    async def replace(self, key: str, data: bytes, version: str) -> str | None:
        """Store `data` if the record is still at `version`; None if it changed (or vanished) since."""

    @abstractmethod
    async def _reachable(self) -> None:
        """Raise `InvalidInputError` if the store cannot be used at all (no directory, no bucket)."""

    async def check(self) -> None:
        """Raise `InvalidInputError` before anything is spent if records cannot be kept here safely:
        the store is unreachable, or it does not really compare and swap (see the module's docstring)."""
        if self.proof_key in _PROVEN:
            return
        await self._reachable()
        try:
            await self._prove_compare_and_swap()
        except (TransientApiError, OSError) as exc:
            raise InvalidInputError(f"submissions: cannot use {self.location} for submission records: {exc}") from None
        _PROVEN.add(self.proof_key)

    @property
    def proof_key(self) -> str:
        """What a proof of compare-and-swap holds for: this location, reached this way."""
        return self.location

    async def _prove_compare_and_swap(self) -> None:
        def body() -> bytes:
            return json.dumps({"check": uuid.uuid4().hex, "at": time.time()}).encode()

        if await self.read(CAS_SENTINEL) is None:
            await self.create(CAS_SENTINEL, body())  # None: another checker created it a moment ago
        if await self.create(CAS_SENTINEL, body()) is not None:
            self._refuse("a second create of an existing record was accepted (it ignores `If-None-Match: *`)")
        if await self.replace(CAS_SENTINEL, body(), _WRONG_VERSIONS[self.kind]) is not None:
            self._refuse("a replace at a version the record does not have was accepted (it ignores `If-Match`)")
        for _ in range(5):  # other checkers may replace it between our read and our write
            found = await self.read(CAS_SENTINEL)
            if found is not None and await self.replace(CAS_SENTINEL, body(), found[1]) is not None:
                return
        self._refuse("a replace at the record's current version was refused five times")

    def _refuse(self, what: str) -> None:
        raise InvalidInputError(
            f"submissions: {self.location} does not compare and swap: {what}. Two hosts could then both pay for "
            "one generation, and a spend cap could lose updates. Use a store that honours conditional writes "
            "(AWS S3, or a local directory for one host), or remove what strips the headers in between."
        )


class LocalRecordStore(RecordStore):
    """JSON files in a directory; compare-and-swap under an exclusive lock of the directory."""

    kind = "local"

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory).expanduser()
        self.location = str(self.directory)

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def read_now(self, key: str) -> Versioned | None:
        """(data, revision): the file is the revision number, a newline, then the data. Synchronous."""
        try:
            revision, _, data = self._path(key).read_bytes().partition(b"\n")
        except FileNotFoundError:
            return None
        return data, revision.decode()

    async def read(self, key: str) -> Versioned | None:
        return self.read_now(key)

    def _staged(self, key: str, data: bytes, revision: int) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        temporary = self.directory / f".{key}.{uuid.uuid4().hex}.tmp"
        with open(temporary, "wb") as handle:
            handle.write(b"%d\n" % revision + data)
            handle.flush()
            os.fsync(handle.fileno())
        return temporary

    def _create(self, key: str, data: bytes) -> str | None:
        temporary = self._staged(key, data, 1)
        try:
            os.link(temporary, self._path(key))  # fails if it exists; never exposes a partial file
        except FileExistsError:
            return None
        finally:
            temporary.unlink(missing_ok=True)
        self._sync_directory()
        return "1"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _replace(self, key: str, data: bytes, version: str) -> str | None:
        revision = int(version) + 1
        temporary = self._staged(key, data, revision)
        try:
            with self._locked():
                current = self.read_now(key)
                if current is None or current[1] != version:
                    return None
                os.replace(temporary, self._path(key))
        finally:
            temporary.unlink(missing_ok=True)
        self._sync_directory()  # the rename itself survives a crash of the host
        return str(revision)

    def _sync_directory(self) -> None:
        descriptor = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    async def create(self, key: str, data: bytes) -> str | None:
        return await asyncio.to_thread(self._create, key, data)

    async def replace(self, key: str, data: bytes, version: str) -> str | None:
        return await asyncio.to_thread(self._replace, key, data, version)

    async def _reachable(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with self._locked():
                pass
        except OSError as exc:
            raise InvalidInputError(
                f"submissions: cannot keep records in {self.directory} ({exc.strerror or exc}); set "
                f"{SUBMISSIONS_ENV} or the `submissions` parameter to a writable directory or s3://bucket/prefix."
            ) from None


class S3RecordStore(RecordStore):
    """JSON objects under `s3://bucket/prefix/`; create with `If-None-Match: *`, update with `If-Match`."""

    kind = "s3"

    def __init__(self, bucket: str, prefix: str, client: Any) -> None:
        self.bucket, self.prefix, self.client = bucket, prefix.strip("/"), client
        self.location = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"

    @property
    def shared(self) -> bool:
        return True

    @property
    def proof_key(self) -> str:
        return f"{self.location} via {getattr(self.client.meta, 'endpoint_url', '')}"

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}.json" if self.prefix else f"{key}.json"

    async def _call(self, what: str, function: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(function, Bucket=self.bucket, Key=self._key(kwargs.pop("key")), **kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            if code in _LOST_RACE or status in _LOST_RACE:
                return None
            raise TransientApiError(f"Submission record store {self.location}: {what} failed ({code or status}).") from None
        except BotoCoreError as exc:
            raise TransientApiError(
                f"Submission record store {self.location}: {what} failed ({type(exc).__name__})."
            ) from None

    async def read(self, key: str) -> Versioned | None:
        answer = await self._call("reading a record", self.client.get_object, key=key)
        if answer is None:
            return None
        data = await asyncio.to_thread(answer["Body"].read)
        return data, answer["ETag"]

    async def create(self, key: str, data: bytes) -> str | None:
        answer = await self._call("creating a record", self.client.put_object, key=key, Body=data,
                                  IfNoneMatch="*", ContentType="application/json")
        return None if answer is None else answer["ETag"]

    async def replace(self, key: str, data: bytes, version: str) -> str | None:
        answer = await self._call("updating a record", self.client.put_object, key=key, Body=data,
                                  IfMatch=version, ContentType="application/json")
        return None if answer is None else answer["ETag"]

    async def _reachable(self) -> None:
        try:
            await asyncio.to_thread(self.client.head_bucket, Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            raise InvalidInputError(
                f"submissions: cannot use {self.location} for submission records ({exc}); check the bucket and "
                "the AWS credentials (the AwsCredentials block in `aws_credentials`, or the default chain)."
            ) from None


async def open_store(location: str | None = None, aws_credentials: str | None = None) -> RecordStore:
    """The record store at `location` (a directory or s3://bucket/prefix), default `default_location()`."""
    location = (location or default_location()).strip()
    if location.startswith("s3://"):
        bucket, _, prefix = location.removeprefix("s3://").partition("/")
        if not bucket:
            raise InvalidInputError(f"submissions {location!r} is not s3://bucket/prefix.")
        return S3RecordStore(bucket, prefix, await s3_client(aws_credentials))
    if "://" in location:
        raise InvalidInputError(f"submissions {location!r}: use a local directory or s3://bucket/prefix.")
    return LocalRecordStore(location)
