"""The objects the bridge already emitted, in SQLite, so that de-duplication survives restarts."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from uuid import UUID

from prefect.settings import PREFECT_HOME

from prefect_aimlapi_video.deployments.s3_messages import Identity


class SeenStore:
    """The identities already emitted, in SQLite so that de-duplication survives restarts."""

    def __init__(self, path: Path | str, max_age_days: float = 7.0) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.max_age_seconds = max_age_days * 86400
        self._db = sqlite3.connect(path, isolation_level=None)  # autocommit: a recorded identity is durable
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS seen (bucket TEXT NOT NULL, key TEXT NOT NULL, etag TEXT NOT NULL, "
            "event_id TEXT NOT NULL, seen_at REAL NOT NULL, PRIMARY KEY (bucket, key, etag))"
        )

    def has(self, identity: Identity) -> bool:
        query = "SELECT 1 FROM seen WHERE bucket = ? AND key = ? AND etag = ?"
        return self._db.execute(query, identity).fetchone() is not None

    def add(self, identity: Identity, event_id: UUID | str) -> None:
        self._db.execute("INSERT OR REPLACE INTO seen VALUES (?, ?, ?, ?, ?)", (*identity, str(event_id), time.time()))

    def prune(self, now: float | None = None) -> int:
        """Forget identities older than max_age_days (the queue's redeliveries are long over by then)."""
        cutoff = (time.time() if now is None else now) - self.max_age_seconds
        return self._db.execute("DELETE FROM seen WHERE seen_at < ?", (cutoff,)).rowcount

    def close(self) -> None:
        self._db.close()


def default_state_file() -> Path:
    return Path(PREFECT_HOME.value()) / "aimlapi" / "s3-bridge.sqlite"
