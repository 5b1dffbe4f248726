"""What this generation will cost, known before it is paid: the input's seconds times the credits per
second this account was actually charged.

The provider charges video by the second of output, and a video-to-video output is as long as its
input. Its price is not published; its sample quotes 315,000 credits for a 5 s clip (63,000 per
second, which the sandbox also charges), so that is the rate until the account has history. After
each completed generation, the rate it was charged (credits / output seconds) is kept beside the
records (`RATES_KEY`), so every worker sharing the store estimates from the same history; the
estimate uses the median of the newest `KEEP_RATES`.
"""

from __future__ import annotations

import statistics

from pydantic import BaseModel

from prefect_aimlapi_video.api.errors import InvalidInputError
from prefect_aimlapi_video.api.models import CREDITS_PER_USD
from prefect_aimlapi_video.media.limits import InputLimits
from prefect_aimlapi_video.storage.record_store import RecordStore
from prefect_aimlapi_video.submission.record import append_capped, read_list

DEFAULT_CREDITS_PER_SECOND = 63_000.0
RATES_KEY = "credit-rates"
KEEP_RATES = 50


class Estimate(BaseModel):
    """The expected charge of one generation."""

    seconds: float
    credits_per_second: float
    learned_from: int  # how many past generations the rate comes from (0: the provider's sample rate)

    @property
    def credits(self) -> float:
        return self.seconds * self.credits_per_second

    @property
    def usd(self) -> float:
        return self.credits / CREDITS_PER_USD

    def describe(self) -> str:
        source = (f"the median of {self.learned_from} past generations" if self.learned_from
                  else "the provider's sample rate: no history yet")
        return (f"about {self.credits:,.0f} credits (${self.usd:.4f}) for {self.seconds:.2f} s at "
                f"{self.credits_per_second:,.0f} credits/s ({source})")


async def estimate(store: RecordStore | None, seconds: float) -> Estimate:
    """The estimate for an input of `seconds`; the default rate if the store cannot be read."""
    try:
        rates = [float(r) for r in await read_list(store, RATES_KEY) if float(r) > 0][-KEEP_RATES:] if store else []
    except Exception:  # a hint: without history, the sample rate
        rates = []
    rate = statistics.median(rates) if rates else DEFAULT_CREDITS_PER_SECOND
    return Estimate(seconds=seconds, credits_per_second=rate, learned_from=len(rates))


async def learn_rate(store: RecordStore, credits: float | None, seconds: float | None) -> None:
    """Keep what one completed generation was charged per second of output."""
    if credits and seconds and seconds > 0:
        await append_capped(store, RATES_KEY, round(credits / seconds, 3), KEEP_RATES)


def check_ceiling(found: Estimate, limits: InputLimits) -> None:
    """A generation estimated above `max_generation_usd` is refused whatever budget is set: a user raises
    that ceiling on purpose. (A budget's cap is checked against the same estimate when it is reserved.)"""
    if found.usd > limits.max_generation_usd:
        raise InvalidInputError(
            f"this generation is estimated at ${found.usd:.2f} ({found.describe()}), above max_generation_usd "
            f"(${limits.max_generation_usd:.2f}); raise it on purpose (--max-generation-usd) if you mean it; "
            "nothing was sent."
        )
