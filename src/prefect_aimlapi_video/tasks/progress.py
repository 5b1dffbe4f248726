"""The progress artifact a wait shows: best effort, throttled, sent in the background."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any


class ProgressArtifact:
    """A progress artifact kept up to date in the background, so waiting never waits on the Prefect API.

    Use it as `async with ProgressArtifact() as progress:`. `update` only records the latest
    value; one background task sends it: the first value at once, then at most one value every
    `min_interval` seconds (each poll would otherwise be a request, and with a batch of
    generations those requests load the Prefect server more than the runs themselves). A final
    100 % and the value pending when the block exits are sent without waiting. Progress is best
    effort: a failed update is logged, never raised.
    """

    def __init__(self, min_interval: float = 2.0, *, enabled: bool = True) -> None:
        self.min_interval = min_interval
        self.enabled = enabled  # disabled: `update` does nothing (the caller's choice: a batch shows its own)
        self._id: Any = None
        self._shown = -1.0
        self._sent_at: float | None = None
        self._wanted: tuple[float, str] | None = None
        self._hurry = asyncio.Event()  # set for a final value or on exit: stop waiting out the interval
        self._sender: asyncio.Task[None] | None = None

    def update(self, percent: float, description: str) -> None:
        if not self.enabled:
            return
        percent = max(0.0, min(100.0, round(percent, 0)))
        if percent == self._shown and self._wanted is None:
            return
        self._wanted = (percent, description)
        if percent >= 100:
            self._hurry.set()
        if self._sender is None or self._sender.done():
            self._sender = asyncio.ensure_future(self._send())

    async def _send(self) -> None:
        from prefect.artifacts import (
            acreate_progress_artifact,
            aupdate_progress_artifact,
        )

        while self._wanted is not None:
            if self._sent_at is not None and not self._hurry.is_set():
                wait = self._sent_at + self.min_interval - time.monotonic()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._hurry.wait(), max(0.0, wait))
            percent, description = self._wanted
            self._wanted = None
            try:
                if self._id is None:
                    self._id = await acreate_progress_artifact(progress=percent, description=description)
                else:
                    await aupdate_progress_artifact(artifact_id=self._id, progress=percent, description=description)
                self._shown = percent
            except Exception as exc:  # progress must never fail a generation
                logging.getLogger(__name__).debug("Progress artifact update failed: %s", exc)
            self._sent_at = time.monotonic()

    async def __aenter__(self) -> ProgressArtifact:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Send the latest value before the run that owns it ends, however it ends."""
        self._hurry.set()
        if self._sender is not None:
            await self._sender
