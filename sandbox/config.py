"""How a sandbox instance behaves: key, timing, capacity, credits, limits and faults."""

from __future__ import annotations

from pydantic import BaseModel, Field

from .faults import FaultConfig

MODEL = "krea/krea-wan-14b/video-to-video"
# The provider quotes a price on POST before it has seen the video: its sample shows 315000
# credits, i.e. a 5 s clip. The sandbox reserves that much per queued generation.
HOLD_SECONDS = 5.0
CREDITS_PER_USD = 2_000_000


class SandboxConfig(BaseModel):
    """Settings of one sandbox server; every field has a default fit for a local demo."""

    api_key: str = Field("sandbox-key", min_length=1)
    processing_seconds: float = Field(
        2.0, ge=0, description="time a generation occupies a GPU slot, transform included"
    )
    processing_spread: float = Field(
        0.0,
        ge=0,
        description="0 = every generation takes processing_seconds; else each one's time is drawn from a normal "
        "distribution with mean processing_seconds and standard deviation processing_spread * processing_seconds, "
        "clipped at >= 0.1 * processing_seconds (real generation times vary; poll schedules must cope)",
    )
    processing_seed: int = Field(0, description="seeds the processing-time draws, so runs are reproducible")
    workers: int = Field(4, ge=1, description="parallel GPU slots; further generations stay queued")
    transform_workers: int = Field(2, ge=1, description="threads doing real video work, independent of GPU slots")
    credit_balance: float | None = Field(None, ge=0, description="None = unlimited; else POSTs beyond it get 403")
    credits_per_second: float = Field(63_000, ge=0, description="charge per output second (5 s -> 315000)")
    faults: FaultConfig = Field(default_factory=FaultConfig)
    max_data_uri_bytes: int = Field(64 * 1024 * 1024, ge=1, description="cap on decoded input size, data URI or URL")
    fetch_timeout_seconds: float = Field(30.0, gt=0)
    result_url_ttl_seconds: float = Field(3600.0, gt=0)
    public_base_url: str | None = Field(None, description="base of result URLs; None = the URL the client used")
    extra_models: list[str] = Field(
        default_factory=list,
        description="other models the endpoint answers to, as the provider's serves many: a test of a second "
        "model adds its name; their requests are the Krea model's fields plus any others (kept in the ledger)",
    )
