"""Where a result video goes: a local path, any Prefect writable filesystem block, or S3.

`resolve_output` runs before any POST, so a bad template or a missing block fails for free.
`store_video` runs after the download has been verified; every destination is written so that a
reader never sees a partial file (temp name + rename locally, a single verified PUT on S3).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pydantic_core
from pydantic import BaseModel

from prefect_aimlapi_video.flows.errors import InvalidInputError

DEFAULT_TEMPLATE = "{stem}-{generation}.mp4"
DEFAULT_DIRECTORY = "aimlapi-outputs"
TEMPLATE_FIELDS = ("stem", "seed", "strength", "generation", "fingerprint", "flow_run", "date")


class OutputTarget(BaseModel):
    """A checked destination. `template` still holds `{generation}` until the id is known."""

    kind: Literal["local", "block", "s3"]
    template: str
    block: str | None = None
    bucket: str | None = None
    aws_credentials: str | None = None

    def render(self, fields: dict[str, Any]) -> str:
        return self.template.format_map(fields)

    def location(self, path: str) -> str:
        """How to show a stored file: an absolute path, `s3://bucket/key` or `block-slug/name:path`."""
        if self.kind == "s3":
            return f"s3://{self.bucket}/{path}"
        if self.kind == "block":
            return f"{self.block}:{path}"
        return path


def template_fields(
    *, stem: str, seed: int | None, strength: float, fingerprint: str, generation_id: str, flow_run_id: str | None
) -> dict[str, str]:
    """Values for `{...}` in output templates; each is safe as a single path segment."""
    short_generation = re.sub(r"[^A-Za-z0-9-]+", "-", generation_id.split(":", 1)[0])[:36] or "generation"
    return {
        "stem": stem,
        "seed": "random" if seed is None else str(seed),
        "strength": f"{strength:g}",
        "generation": short_generation,
        "fingerprint": fingerprint[:12],
        "flow_run": (flow_run_id or "local")[:8],
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d"),
    }


def _check_template(template: str) -> None:
    try:
        template.format_map({name: "x" for name in TEMPLATE_FIELDS})
    except KeyError as exc:
        raise InvalidInputError(
            f"output template {template!r} uses unknown field {exc}; available: "
            + ", ".join("{" + f + "}" for f in TEMPLATE_FIELDS)
        ) from None
    except (ValueError, IndexError) as exc:
        raise InvalidInputError(f"output template {template!r} is malformed ({exc}).") from None


async def resolve_output(
    output: str | None, output_storage: str | None = None, aws_credentials: str | None = None
) -> OutputTarget:
    """Check the destination before anything is spent: template fields, block existence, bucket."""
    if output_storage:
        target = await _resolve_block(output_storage, output or DEFAULT_TEMPLATE, aws_credentials)
    elif output and output.startswith("s3://"):
        from prefect_aimlapi_video.flows.storage import resolve_s3_output

        target = await resolve_s3_output(output, aws_credentials)
    else:
        template = output or f"{DEFAULT_DIRECTORY}/{DEFAULT_TEMPLATE}"
        if output and (output.endswith(("/", os.sep)) or Path(output).expanduser().is_dir()):
            template = str(Path(output) / DEFAULT_TEMPLATE)
        if "://" in template:
            raise InvalidInputError(f"output {template!r}: only local paths and s3:// URLs are supported.")
        target = OutputTarget(kind="local", template=str(Path(template).expanduser().absolute()))
    _check_template(target.template)
    return target


async def _resolve_block(slug_and_name: str, template: str, aws_credentials: str | None) -> OutputTarget:
    from prefect.filesystems import WritableFileSystem

    block = await load_block(slug_and_name, what="output_storage")
    if not isinstance(block, WritableFileSystem):
        raise InvalidInputError(
            f"output_storage {slug_and_name!r} is a {type(block).__name__}, not a writable filesystem block."
        )
    from prefect_aws.s3 import S3Bucket

    if isinstance(block, S3Bucket):
        from prefect_aimlapi_video.flows.storage import resolve_s3_bucket_output

        return await resolve_s3_bucket_output(block, slug_and_name, template)
    return OutputTarget(kind="block", template=template.lstrip("/"), block=slug_and_name)


async def load_block(slug_and_name: str, *, what: str) -> Any:
    """Load a block by `block-type-slug/block-name`, with a message that says how to fix a miss."""
    from prefect.blocks.core import Block

    if "/" not in slug_and_name:
        raise InvalidInputError(
            f"{what} must be 'block-type-slug/block-name' (e.g. 'local-file-system/outputs'), got {slug_and_name!r}."
        )
    try:
        return await Block.aload(slug_and_name)
    except (ValueError, KeyError) as exc:
        raise InvalidInputError(
            f"{what}: no block {slug_and_name!r} on this Prefect server ({exc}). Create it in the UI "
            "(Blocks) or with Python, then retry."
        ) from None


async def store_file(
    target: OutputTarget, local_file: Path, path: str, *, sha256: str, content_type: str = "video/mp4"
) -> str:
    """Move a verified local file to `path` of the target; return the location to report."""
    if target.kind == "local":
        move_atomically(local_file, Path(path))
        return path
    if target.kind == "s3":
        from prefect_aimlapi_video.flows.storage import upload_file

        return await upload_file(target, local_file, path, sha256=sha256, content_type=content_type)
    block = await load_block(target.block or "", what="output_storage")
    from prefect.filesystems import LocalFileSystem

    if isinstance(block, LocalFileSystem):
        move_atomically(local_file, _inside_basepath(block, path, target))
    else:  # a generic WritableFileSystem takes bytes, so this path holds the file in memory
        await block.write_path(path, local_file.read_bytes())
    return target.location(path)


@contextlib.contextmanager
def staging_file(target: OutputTarget, path: str, suffix: str) -> Iterator[Path]:
    """A temporary file to build `path` in, removed on exit unless stored meanwhile.

    It sits next to a local destination, so storing it is an atomic rename; for other targets
    it sits in a temp dir that goes with it.
    """
    directory = Path(path).parent if target.kind == "local" else Path(tempfile.mkdtemp(prefix="aimlapi-"))
    directory.mkdir(parents=True, exist_ok=True)
    staged = directory / f".{uuid.uuid4().hex}{suffix}"
    try:
        yield staged
    finally:
        staged.unlink(missing_ok=True)
        if target.kind != "local":
            shutil.rmtree(directory, ignore_errors=True)


async def write_sidecar(target: OutputTarget, video_path: str, record: dict[str, Any]) -> str:
    """Write `<video path>.json` next to the video: what was asked, what it cost, how it went."""
    content = pydantic_core.to_json(record, indent=2, fallback=str)
    path = f"{video_path}.json"
    with staging_file(target, path, ".sidecar.json") as staged:
        staged.write_bytes(content)
        return await store_file(
            target, staged, path, sha256=hashlib.sha256(content).hexdigest(), content_type="application/json"
        )


def _inside_basepath(block: Any, path: str, target: OutputTarget) -> Path:
    base = Path(block.basepath or ".").expanduser().resolve()
    final = (base / path).resolve()
    if base not in final.parents:
        raise InvalidInputError(f"output path {path!r} leaves the base path of {target.block!r}.")
    return final


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
        temporary.unlink(missing_ok=True)
