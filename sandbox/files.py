"""Result files: stored in a temp directory owned by the app, served through signed, expiring URLs.

The URLs mimic the provider's signed CDN links (``?Expires=...&Signature=...``) so clients learn
to download promptly and to treat the link as a secret.
"""

from __future__ import annotations

import hmac
import math
import secrets
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlencode


class ResultFiles:
    def __init__(self, ttl_seconds: float) -> None:
        self.ttl_seconds = ttl_seconds
        self._secret = secrets.token_bytes(32)
        self.root = Path(tempfile.mkdtemp(prefix="aimlapi-sandbox-"))
        self.directory = Path(tempfile.mkdtemp(dir=self.root))

    @staticmethod
    def new_token() -> str:
        return uuid.uuid4().hex

    def path(self, token: str) -> Path:
        return self.directory / f"{token}.mp4"

    def _signature(self, token: str, expires: int) -> str:
        return hmac.new(self._secret, f"{token}:{expires}".encode(), "sha256").hexdigest()

    def signed_url(self, base_url: str, token: str) -> str:
        """A fresh link on every call, valid for at least ``ttl_seconds``."""
        expires = math.ceil(time.time() + self.ttl_seconds)
        query = urlencode({"Expires": expires, "Signature": self._signature(token, expires)})
        return f"{base_url}/files/{token}.mp4?{query}"

    def verify(self, token: str, expires: str | None, signature: str | None) -> bool:
        if not (expires and expires.isdigit() and signature):
            return False
        return int(expires) >= time.time() and hmac.compare_digest(signature, self._signature(token, int(expires)))

    def clear(self) -> None:
        """Forget every file; a transform still running writes into the old, deleted directory."""
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory = Path(tempfile.mkdtemp(dir=self.root))

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
