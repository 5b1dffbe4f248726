"""Fault injection: which failure a request gets, from a script first and then a seeded draw.

Scripted rules make tests deterministic; the seeded random draw makes soak runs reproducible.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any, Literal, get_args

from pydantic import BaseModel, Field, model_validator

Route = Literal["submit", "poll", "download", "logs"]
FaultKind = Literal[
    "rate_limit",
    "server_error_500",
    "server_error_502",
    "server_error_503",
    "drop_connection",
    "slow_response",
    "accept_then_502",
    "truncated_download",
    "generation_error",
    "unknown_status",
    "extra_fields",
    "accept_then_500",
    "gateway_503",
    "drip_download",
]
ALL_KINDS: tuple[FaultKind, ...] = get_args(FaultKind)
# Answered instead of the real response; on submit this happens before acceptance (no charge).
REJECTING_KINDS: dict[FaultKind, int] = {
    "rate_limit": 429,
    "server_error_500": 500,
    "server_error_502": 502,
    "server_error_503": 503,
}
_HTTP_FAULTS = (*REJECTING_KINDS, "drop_connection", "slow_response")
# Only a POST can be accepted (and so charged) despite a 5xx, or be refused by a gateway before the
# provider saw it, or fail later, asynchronously.
_SUBMIT_ONLY = ("accept_then_502", "accept_then_500", "gateway_503", "generation_error")
ROUTE_KINDS: dict[Route, frozenset[FaultKind]] = {
    "submit": frozenset((*_HTTP_FAULTS, *_SUBMIT_ONLY, "unknown_status", "extra_fields")),
    "poll": frozenset((*_HTTP_FAULTS, "unknown_status", "extra_fields")),
    "download": frozenset(
        (
            "server_error_500",
            "server_error_502",
            "server_error_503",
            "drop_connection",
            "slow_response",
            "truncated_download",
            "drip_download",
        )
    ),
    "logs": frozenset((*_HTTP_FAULTS, "extra_fields")),
}
UNKNOWN_STATUS_WORDS = ("processing", "waiting", "active", "in_progress")
# What a gateway in front of the provider answers: its own HTML page, not the provider's JSON.
# 502 comes after the provider accepted the POST (``accept_then_502``); 503 before it saw it (``gateway_503``).
GATEWAY_502_PAGE = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n"
)
GATEWAY_503_PAGE = (
    "<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n"
    "<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n</body>\r\n</html>\r\n"
)
# The usage log's row shapes we must survive (the provider documents only `client_request_id`):
# both ids; the generation id only as `inference_id`; or no field we could recognise as one.
LogRowShape = Literal["standard", "inference_id_only", "unidentifiable"]
# When a request first appears in the usage log: on acceptance, or only once its generation ends.
LogVisibility = Literal["at_acceptance", "at_completion"]


# What the sandbox counts of its rate limit (``/sandbox/ledger``'s ``log_reads``): usage-log reads and
# those refused with 429, and, where polls share the limit, polls and those refused.
LOG_COUNTS = ("reads", "rate_limited", "polls", "polls_rate_limited")


class FaultRule(BaseModel):
    """Inject ``kind`` into the next ``times`` requests of ``route``."""

    route: Route
    kind: FaultKind
    times: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _kind_fits_route(self) -> FaultRule:
        if self.kind not in ROUTE_KINDS[self.route]:
            raise ValueError(
                f"{self.kind} does not apply to route {self.route}; allowed: {sorted(ROUTE_KINDS[self.route])}"
            )
        return self


class FaultConfig(BaseModel):
    """Fault settings, and how the usage log behaves; replaceable at runtime through ``POST /sandbox/faults``."""

    seed: int = 0
    rate: float = Field(0.0, ge=0, le=1, description="probability that an eligible request gets a random fault")
    kinds: list[FaultKind] = Field(default_factory=lambda: list(ALL_KINDS))
    retry_after_seconds: float = Field(1.0, ge=0)
    slow_seconds: float = Field(30.0, ge=0)
    unknown_status_seconds: float = Field(2.0, ge=0)
    script: list[FaultRule] = Field(default_factory=list)
    # How the usage log behaves: each plausible answer to what the provider does not document.
    log_visibility: LogVisibility = "at_acceptance"
    log_delay_seconds: float = Field(0.0, ge=0, description="rows appear this long after they become visible")
    log_row_shape: LogRowShape = "standard"
    log_refused_requests: bool = Field(False, description="list refused POSTs too (status failed, cost 0, no id)")
    log_reads_per_minute: int | None = Field(None, ge=1, description="answer 429 above this many reads per 60 s")
    polls_share_log_limit: bool = Field(
        False, description="the limit counts status polls too, one window for both (the provider documents it for "
        "the usage log only; whether polls count is not known)")
    drip_bytes_per_second: float = Field(1.0, gt=0, description="how fast a drip_download sends its bytes")
    echo_key_in_errors: bool = Field(False, description="a 401 quotes the key it refused, bare (a careless provider)")


class FaultInjector:
    """Per-request fault decisions. Not thread-safe: used from the server's event loop only."""

    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.remaining = [rule.times for rule in config.script]
        self.injected: Counter[str] = Counter()  # "route:kind" -> how many requests got it

    def draw(self, route: Route) -> FaultKind | None:
        """The first unused scripted rule for ``route``, else a seeded draw at ``rate``."""
        kind = self._draw(route)
        if kind is not None:
            self.injected[f"{route}:{kind}"] += 1
        return kind

    def _draw(self, route: Route) -> FaultKind | None:
        for index, rule in enumerate(self.config.script):
            if rule.route == route and self.remaining[index]:
                self.remaining[index] -= 1
                return rule.kind
        eligible = [kind for kind in self.config.kinds if kind in ROUTE_KINDS[route]]
        if eligible and self.rng.random() < self.config.rate:
            return self.rng.choice(eligible)
        return None

    def generation_error(self) -> dict[str, Any]:
        """One of the two shapes the provider uses for an asynchronous failure, chosen by the seeded RNG."""
        if self.rng.random() < 0.5:
            return {
                "name": "GenerationError",
                "message": "Injected by the sandbox: the model failed to generate this video.",
            }
        return {
            "detail": [
                {
                    "loc": ["body", "video_url"],
                    "msg": "Injected by the sandbox: the input video was rejected by the model.",
                    "type": "value_error",
                    "input": None,
                }
            ]
        }

    def unknown_status_word(self) -> str:
        return self.rng.choice(UNKNOWN_STATUS_WORDS)


def add_extra_fields(value: Any) -> Any:
    """Copy of a JSON body with an unknown field added to every object, as a future API version might."""
    if isinstance(value, dict):
        return {**{key: add_extra_fields(item) for key, item in value.items()}, "x_sandbox_extra": {"injected": True}}
    if isinstance(value, list):
        return [add_extra_fields(item) for item in value]
    return value
