"""Generations from acceptance to result: GPU slots, the real transform, the ledger and credits.

Everything here runs on the server's event loop except the transform, which runs in a bounded
thread pool, so hundreds of queued generations cost only a few idle coroutines.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from .config import HOLD_SECONDS, SandboxConfig
from .contract import Submission, new_generation_id
from .files import ResultFiles
from .inputs import InputFetchError, fetch_to_file
from .ledger import LedgerEntry
from .transform import InputDecodeError, transform_video

logger = logging.getLogger("sandbox")


@dataclass(eq=False)
class Generation:
    entry: LedgerEntry
    source: bytes | str | None  # decoded data URI or http(s) URL; dropped once read
    token: str  # names the result file; unrelated to the id so URLs reveal nothing
    hold: int  # credits reserved while pending
    failure: dict[str, Any] | None = None  # set -> the generation ends in "error" with this body
    masked_until: float = 0.0  # monotonic deadline of an injected unknown status word
    mask_word: str = ""
    duration: float | None = None
    task: asyncio.Task[None] | None = None
    processing_seconds: float = 0.0  # GPU time of this generation, drawn on acceptance

    @property
    def reported_status(self) -> str:
        return self.mask_word if time.monotonic() < self.masked_until else self.entry.status

    @property
    def reported_credits(self) -> int:
        return self.entry.credits if self.entry.finished else self.hold


class Engine:
    """In-memory state of one sandbox; ``reset`` returns it to an empty ledger."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.hold = round(config.credits_per_second * HOLD_SECONDS)
        self.files = ResultFiles(config.result_url_ttl_seconds)
        self.executor = ThreadPoolExecutor(config.transform_workers, thread_name_prefix="sandbox-transform")
        self.http = httpx.AsyncClient(timeout=config.fetch_timeout_seconds, follow_redirects=True)
        self._clear()

    def _clear(self) -> None:
        self.generations: dict[str, Generation] = {}
        self.by_token: dict[str, Generation] = {}
        self.gpu = asyncio.Semaphore(self.config.workers)
        self.in_flight = 0
        self.max_in_flight = 0
        self.refused: list[dict[str, Any]] = []  # usage-log rows of refused POSTs (when listed)
        # Reseeded on reset, so the n-th generation after a reset always gets the same time.
        self.processing_rng = random.Random(self.config.processing_seed)

    def draw_processing_seconds(self) -> float:
        """One generation's GPU time: processing_seconds, or a seeded normal draw around it.

        Drawn in acceptance order (not when a slot frees up) so the sequence does not depend on
        how the event loop interleaves the generations' tasks.
        """
        mean, spread = self.config.processing_seconds, self.config.processing_spread
        if spread == 0:
            return mean
        return max(0.1 * mean, self.processing_rng.gauss(mean, spread * mean))

    def credits_left(self) -> float | None:
        """Balance minus charges and holds of pending generations; None when unlimited."""
        if self.config.credit_balance is None:
            return None
        return self.config.credit_balance - sum(g.reported_credits for g in self.generations.values())

    def accept(
        self, submission: Submission, client_request_id: str | None, failure: dict[str, Any] | None
    ) -> Generation:
        """Record a paid generation and start it; from here on the POST counts as charged."""
        request = submission.request
        entry = LedgerEntry(
            generation_id=new_generation_id(request.model),
            model=request.model,
            fields=submission.extra,
            request_fingerprint=submission.fingerprint,
            client_request_id=client_request_id,
            prompt=request.prompt,
            strength=request.strength,
            seed=request.seed if request.seed is not None else random.randrange(2**31),
            accepted_at=time.time(),
        )
        source = submission.inline_video if submission.inline_video is not None else request.video_url
        generation = Generation(entry, source, self.files.new_token(), self.hold, failure)
        generation.processing_seconds = self.draw_processing_seconds()
        self.generations[entry.generation_id] = generation
        self.by_token[generation.token] = generation
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        generation.task = asyncio.create_task(self._run(generation), name=entry.generation_id)
        return generation

    def mask_status(self, generation: Generation, word: str, seconds: float) -> None:
        generation.mask_word, generation.masked_until = word, time.monotonic() + seconds

    def result_path(self, token: str) -> Path | None:
        generation = self.by_token.get(token)
        return self.files.path(token) if generation and generation.entry.status == "completed" else None

    async def _run(self, generation: Generation) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with self.gpu:
                generation.entry.status = "generating"
                generation.entry.started_at = time.time()
                deadline = loop.time() + generation.processing_seconds
                if generation.failure is None:
                    await self._render(generation)
                await asyncio.sleep(max(0.0, deadline - loop.time()))
        except (InputFetchError, InputDecodeError) as exc:
            generation.failure = {"name": type(exc).__name__, "message": str(exc)}
        except Exception:
            logger.exception("generation %s failed", generation.entry.generation_id)
            generation.failure = {"name": "InternalError", "message": "The sandbox failed to process this video."}
        self._finish(generation)

    async def _render(self, generation: Generation) -> None:
        entry = generation.entry
        downloaded = self.files.directory / f"{generation.token}.input"
        source, generation.source = generation.source, None
        try:
            if isinstance(source, str):
                await fetch_to_file(self.http, source, downloaded, self.config.max_data_uri_bytes)
                source = downloaded
            work = functools.partial(
                transform_video,
                source,
                self.files.path(generation.token),
                prompt=entry.prompt,
                strength=entry.strength,
                seed=entry.seed,
            )
            result = await asyncio.get_running_loop().run_in_executor(self.executor, work)
        finally:
            downloaded.unlink(missing_ok=True)
        entry.output_sha256, entry.output_bytes = result.sha256, result.size
        generation.duration = round(result.duration, 3)

    def _finish(self, generation: Generation) -> None:
        entry = generation.entry
        if generation.failure is None:
            entry.status = "completed"
            entry.credits = round(self.config.credits_per_second * (generation.duration or 0))
        else:
            entry.status, entry.error = "error", generation.failure
            entry.output_sha256 = entry.output_bytes = None
        entry.completed_at = time.time()
        self.in_flight -= 1

    def _cancel_all(self) -> list[asyncio.Task[None]]:
        tasks = [g.task for g in self.generations.values() if g.task and not g.task.done()]
        for task in tasks:
            task.cancel()
        return tasks

    def reset(self) -> None:
        self._cancel_all()
        self.files.clear()
        self._clear()

    async def aclose(self) -> None:
        await asyncio.gather(*self._cancel_all(), return_exceptions=True)
        await self.http.aclose()
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.files.close()
