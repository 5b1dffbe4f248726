"""Where a result goes: one small class per kind of destination, each checked before any POST.

`resolve_output` turns the user's `output` (and `output_storage`) into a `Destination`: a local path,
any Prefect writable filesystem block, or S3 (a URL or an `S3Bucket` block). A destination owns its
location (`render`, `location`), a place to build a file before it is stored (`staging`), and the
store itself, done so that a reader never sees a partial file (temp name + rename locally, a single
verified upload on S3). A new scheme (say `gs://`) is one class and one line in `SCHEMES`.

Whatever can make storing fail after the generation is paid is tried first (`verify`): a local
directory is created and a probe file written to it and removed, the longest name the template can
render (plus the strip's suffix) must fit the filesystem's limits, and a bucket or block takes a
small probe write where the results will go.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pydantic_core
from prefect.filesystems import LocalFileSystem, WritableFileSystem
from prefect_aws.s3 import S3Bucket
from pydantic import BaseModel

from prefect_aimlapi_video.api.errors import InvalidInputError
from prefect_aimlapi_video.storage.block_refs import load_block
from prefect_aimlapi_video.storage.s3 import call, check_bucket, in_bucket_folder, s3_client, upload_verified
from prefect_aimlapi_video.storage.templates import WIDEST_FIELDS, check_template

DEFAULT_TEMPLATE = "{stem}-{generation}.mp4"
DEFAULT_DIRECTORY = "aimlapi-outputs"
PROBE_NAME = ".aimlapi-write-check"
LONGEST_SUFFIX = ".strip.jpg"  # of the files stored beside a video (`.json`, `.strip.jpg`)


class Destination(BaseModel):
    """A checked destination. `template` still holds `{generation}` until the id is known."""

    kind: str
    template: str

    def render(self, fields: dict[str, Any]) -> str:
        return self.template.format_map(fields)

    async def verify(self) -> None:
        """Try what storing will need, before anything is paid; `InvalidInputError` if it cannot work."""

    def location(self, path: str) -> str:
        """How to show a stored file (never a signed URL)."""
        return path

    @contextlib.contextmanager
    def staging(self, path: str, suffix: str) -> Iterator[Path]:
        """A temporary local file to build `path` in, removed on exit unless stored meanwhile."""
        directory = Path(tempfile.mkdtemp(prefix="aimlapi-"))
        try:
            yield directory / f".{uuid.uuid4().hex}{suffix}"
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    async def store(self, local_file: Path, path: str, *, sha256: str, content_type: str = "video/mp4") -> str:
        """Move a verified local file to `path` here; return the location to report."""
        raise NotImplementedError

    async def write_bytes(self, path: str, content: bytes, *, content_type: str) -> str:
        """Store a small file (a sidecar, a preview image) at `path`, the same way as a video."""
        with self.staging(path, ".small" + Path(path).suffix) as staged:
            staged.write_bytes(content)
            return await self.store(staged, path, sha256=hashlib.sha256(content).hexdigest(), content_type=content_type)

    async def write_sidecar(self, video_path: str, record: dict[str, Any]) -> str:
        """Write `<video path>.json` next to the video: what was asked, what it cost, how it went."""
        content = pydantic_core.to_json(record, indent=2, fallback=str)
        return await self.write_bytes(f"{video_path}.json", content, content_type="application/json")


class LocalDestination(Destination):
    """A local path; staged next to it, so storing is an atomic rename."""

    kind: str = "local"

    @contextlib.contextmanager
    def staging(self, path: str, suffix: str) -> Iterator[Path]:
        directory = Path(path).parent
        directory.mkdir(parents=True, exist_ok=True)
        staged = directory / f".{uuid.uuid4().hex}{suffix}"
        try:
            yield staged
        finally:
            with contextlib.suppress(OSError):  # never hide the store's own error behind a clean-up's
                staged.unlink(missing_ok=True)

    async def store(self, local_file: Path, path: str, *, sha256: str, content_type: str = "video/mp4") -> str:
        move_atomically(local_file, Path(path))
        return path

    async def verify(self) -> None:
        check_local_path(Path(self.render(WIDEST_FIELDS)), f"output {self.template}")


class BlockDestination(Destination):
    """A path inside any writable filesystem block (`block-type-slug/name`)."""

    kind: str = "block"
    block: str

    def location(self, path: str) -> str:
        return f"{self.block}:{path}"

    async def store(self, local_file: Path, path: str, *, sha256: str, content_type: str = "video/mp4") -> str:
        block = await load_block(self.block, what="output_storage")
        if isinstance(block, LocalFileSystem):
            base = Path(block.basepath or ".").expanduser().resolve()
            final = (base / path).resolve()
            if base not in final.parents:
                raise InvalidInputError(f"output path {path!r} leaves the base path of {self.block!r}.")
            move_atomically(local_file, final)
        else:  # a generic WritableFileSystem takes bytes, so this path holds the file in memory
            await block.write_path(path, local_file.read_bytes())
        return self.location(path)

    async def verify(self) -> None:
        block = await load_block(self.block, what="output_storage")
        sample = self.render(WIDEST_FIELDS)
        if isinstance(block, LocalFileSystem):
            check_local_path(Path(block.basepath or ".").expanduser().resolve() / sample, f"output_storage {self.block}")
            return
        probe = str(Path(sample).parent / PROBE_NAME)
        try:
            await block.write_path(probe, b"")
        except Exception as exc:  # whatever the block raises: it could not store there
            raise InvalidInputError(f"output_storage {self.block!r} cannot write {probe!r} ({type(exc).__name__}: "
                                    f"{str(exc)[:200]}); nothing was sent.") from None


class S3Destination(Destination):
    """`s3://bucket/key-template`, or an `S3Bucket` block: a verified managed upload (multipart)."""

    kind: str = "s3"
    bucket: str
    aws_credentials: str | None = None
    block: str | None = None

    def location(self, path: str) -> str:
        return f"s3://{self.bucket}/{path}"

    async def store(self, local_file: Path, path: str, *, sha256: str, content_type: str = "video/mp4") -> str:
        if self.block:
            client = await s3_client(bucket_block=await load_block(self.block, what="output_storage"))
        else:
            client = await s3_client(self.aws_credentials)
        await upload_verified(client, local_file, self.bucket, path, sha256=sha256, content_type=content_type)
        return self.location(path)

    async def verify(self) -> None:
        """A probe object where results will go, then removed (one fixed name: nothing piles up)."""
        client = await (s3_client(bucket_block=await load_block(self.block, what="output_storage")) if self.block
                        else s3_client(self.aws_credentials))
        folder = self.render(WIDEST_FIELDS).rpartition("/")[0]
        key = f"{folder}/{PROBE_NAME}" if folder else PROBE_NAME
        await call(f"output s3://{self.bucket}/{key} (a probe write, before anything is paid)", client.put_object,
                   Bucket=self.bucket, Key=key, Body=b"")
        with contextlib.suppress(Exception):  # without s3:DeleteObject the probe stays: one small object
            await asyncio.to_thread(client.delete_object, Bucket=self.bucket, Key=key)

    @classmethod
    async def resolve(cls, output: str, aws_credentials: str | None) -> S3Destination:
        """`s3://bucket/key-template` (or `s3://bucket/prefix/`): check the bucket before any POST."""
        bucket, _, template = output.removeprefix("s3://").partition("/")
        if not bucket:
            raise InvalidInputError(f"output {output!r} is not an s3://bucket/key URL.")
        if not template or template.endswith("/"):
            template += DEFAULT_TEMPLATE
        await check_bucket(bucket, await s3_client(aws_credentials))
        return cls(template=template, bucket=bucket, aws_credentials=aws_credentials)

    @classmethod
    async def for_block(cls, block: S3Bucket, slug_and_name: str, template: str) -> S3Destination:
        await check_bucket(block.bucket_name, await s3_client(bucket_block=block))
        return cls(template=in_bucket_folder(block, template), bucket=block.bucket_name, block=slug_and_name)


# URL scheme of `output` -> how to check it and make its destination.
SCHEMES: dict[str, Callable[[str, str | None], Awaitable[Destination]]] = {"s3": S3Destination.resolve}


async def resolve_output(
    output: str | None, output_storage: str | None = None, aws_credentials: str | None = None
) -> Destination:
    """Check the destination before anything is spent: template fields, block existence, bucket."""
    if output_storage:
        target = await _resolve_block(output_storage, output or DEFAULT_TEMPLATE)
    elif output and "://" in output:
        scheme = output.split("://", 1)[0]
        if scheme not in SCHEMES:
            raise InvalidInputError(
                f"output {output!r}: supported are local paths and {', '.join(f'{s}://' for s in SCHEMES)} URLs."
            )
        target = await SCHEMES[scheme](output, aws_credentials)
    else:
        template = output or f"{DEFAULT_DIRECTORY}/{DEFAULT_TEMPLATE}"
        if output and (output.endswith(("/", os.sep)) or _is_directory(Path(output).expanduser())):
            template = str(Path(output) / DEFAULT_TEMPLATE)
        target = LocalDestination(template=str(Path(template).expanduser().absolute()))
    check_template(target.template)
    await target.verify()
    return target


def _is_directory(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # e.g. a name too long to look up: not a directory; `verify` says why it cannot be used
        return False


def check_local_path(path: Path, what: str) -> None:
    """`path`'s directory exists or can be made, takes a file, and `path` (with the longest suffix stored
    beside it) fits the filesystem's name and path limits; else `InvalidInputError`, before any POST."""
    directory = path.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
        name_max = os.pathconf(directory, "PC_NAME_MAX")
        path_max = os.pathconf(directory, "PC_PATH_MAX")
        longest = path.name + LONGEST_SUFFIX
        if len(longest.encode()) > name_max:
            raise InvalidInputError(f"{what}: a file name it makes can be {len(longest.encode())} bytes "
                                    f"({longest[:40]}...), above this filesystem's {name_max}; nothing was sent.")
        if len(str(path).encode()) + len(LONGEST_SUFFIX) >= path_max:
            raise InvalidInputError(f"{what}: its paths can be longer than this filesystem's {path_max} bytes; "
                                    "nothing was sent.")
        probe = directory / f"{PROBE_NAME}-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise InvalidInputError(f"{what}: cannot write to {directory} ({exc.strerror or exc}); nothing was sent."
                                ) from None


async def _resolve_block(slug_and_name: str, template: str) -> Destination:
    block = await load_block(slug_and_name, what="output_storage")
    if not isinstance(block, WritableFileSystem):
        raise InvalidInputError(
            f"output_storage {slug_and_name!r} is a {type(block).__name__}, not a writable filesystem block."
        )
    if isinstance(block, S3Bucket):
        return await S3Destination.for_block(block, slug_and_name, template)
    return BlockDestination(template=template.lstrip("/"), block=slug_and_name)


def move_atomically(source: Path, final: Path) -> None:
    """Rename into place (copy first across filesystems): readers never see a half-written file."""
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(source, final)
        return
    except OSError:
        pass
    temporary = final.parent / f".{final.name}.{uuid.uuid4().hex}.part"
    try:
        shutil.copyfile(source, temporary)
        os.replace(temporary, final)
    finally:
        with contextlib.suppress(OSError):  # the copy's own error is the one to tell
            temporary.unlink(missing_ok=True)
