"""A second model on the provider's endpoint, for tests: everything a new model takes is this class.

`Acme` has a prompt, its own default strength, and a field the Krea model lacks (`style`).
`acme_registered()` registers it for one test and removes it after, so the registry others see is
unchanged; `register_acme()` is what a subprocess (the CLI) calls to know it too.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

from pydantic import Field

from prefect_aimlapi_video.api import requests as requests_module
from prefect_aimlapi_video.api.requests import VideoRequest, register


class Acme(VideoRequest):
    """A made-up model on the same endpoint: a prompt, its own default strength, and a `style`."""

    MODEL: ClassVar[str] = "acme/style-v2v"
    EXPECTED_SECONDS: ClassVar[float] = 30.0

    prompt: str
    strength: float = 0.5
    style: str = Field("plain", description="A house style.")


def register_acme() -> type[VideoRequest]:
    return register(Acme)


@contextmanager
def acme_registered() -> Iterator[type[VideoRequest]]:
    try:
        yield register_acme()
    finally:
        requests_module.REQUEST_MODELS.pop(Acme.MODEL, None)
