"""The ASGI app: the provider's routes, result files, fault injection and the /sandbox control routes.

The state the routes share and the helpers that shape their answers are in ``answers.py``.
"""

from __future__ import annotations

import math
import time

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from .answers import REJECTION_MESSAGES, Answers
from .config import SandboxConfig
from .contract import BodyError, field_errors, parse_submission
from .engine import Generation
from .faults import GATEWAY_502_PAGE, GATEWAY_503_PAGE, LOG_COUNTS, REJECTING_KINDS, FaultConfig, FaultInjector
from .ledger import LOG_STATUS, log_row, refused_row
from .responses import AbortedResponse, RequestIds, drip, linger


class SandboxApp(Answers):
    """Route handlers over one Engine and one FaultInjector (state and answer helpers: ``Answers``)."""

    # -- the provider's routes -------------------------------------------------------------------

    async def submit(self, request: Request) -> Response:
        response, accepted = await self._submit(request)
        if not accepted:
            self.refused(request, response.status_code)
        return response

    def refused(self, request: Request, status_code: int) -> None:
        """A POST that was not accepted; listed in the usage log when the log is set to list refusals."""
        if self.faults.config.log_refused_requests:
            self.engine.refused.append(refused_row(request.state.client_request_id, time.time(), status_code))

    async def _submit(self, request: Request) -> tuple[Response, bool]:
        """The answer, and whether the generation was accepted (and so will be charged)."""
        if denied := self.denied(request):
            return denied, False
        fault = self.faults.draw("submit")
        if fault == "gateway_503":  # a gateway refuses before the provider sees the POST: nothing accepted
            return Response(GATEWAY_503_PAGE, status_code=503, media_type="text/html"), False
        if fault in REJECTING_KINDS:
            return self.rejection(request, fault), False
        try:
            submission = parse_submission(await request.body(), self.config.max_data_uri_bytes,
                                          self.config.extra_models)
        except BodyError as exc:
            return self.error(request, 400, str(exc), errors=exc.errors), False
        credits_left = self.engine.credits_left()
        if credits_left is not None and credits_left < self.engine.hold:
            return self.error(request, 403, "You've run out of credits", credits_left=credits_left), False
        failure = self.faults.generation_error() if fault == "generation_error" else None
        generation = self.engine.accept(submission, request.state.client_request_id, failure)
        if fault == "accept_then_502":  # accepted and charged, but a gateway answers with its own page
            return Response(GATEWAY_502_PAGE, status_code=502, media_type="text/html"), True
        if fault == "accept_then_500":  # accepted and charged, yet the provider itself answers a JSON 500
            return self.error(request, 500, REJECTION_MESSAGES[500]), True
        if fault == "unknown_status":
            self.engine.mask_status(
                generation, self.faults.unknown_status_word(), self.faults.config.unknown_status_seconds
            )
        return await self.generation_response(request, generation, fault, masked=False), True

    async def poll(self, request: Request) -> Response:
        if denied := self.denied(request):
            return denied
        generation_id = request.query_params.get("generation_id")
        if not generation_id:
            return self.error(request, 400, "Query validation error: generation_id is required")
        generation = self.engine.generations.get(generation_id)
        if generation is None:
            return self.error(request, 404, f"Generation {generation_id} not found")
        generation.entry.polls += 1
        if self.faults.config.polls_share_log_limit and (limited := self.log_rate_limited(request, poll=True)):
            return limited
        fault = self.faults.draw("poll")
        if fault in REJECTING_KINDS:
            return self.rejection(request, fault)
        if fault == "unknown_status":
            self.engine.mask_status(
                generation, self.faults.unknown_status_word(), self.faults.config.unknown_status_seconds
            )
        return await self.generation_response(request, generation, fault, masked=True)

    def log_rate_limited(self, request: Request, poll: bool = False) -> JSONResponse | None:
        """429 above ``log_reads_per_minute`` reads in the last 60 s, like the provider's limit; a
        ``poll`` counts (and is refused) only where ``polls_share_log_limit`` says the limit covers polls."""
        limit = self.faults.config.log_reads_per_minute
        now = time.monotonic()
        while self.log_reads and self.log_reads[0] < now - 60:
            self.log_reads.popleft()
        self.log_counts["polls" if poll else "reads"] += 1
        if limit is not None and len(self.log_reads) >= limit:
            self.log_counts["polls_rate_limited" if poll else "rate_limited"] += 1
            wait = math.ceil(self.log_reads[0] + 60 - now)
            return self.error(request, 429, REJECTION_MESSAGES[429], headers={"retry-after": str(max(1, wait))})
        self.log_reads.append(now)
        return None

    def visible(self, generation: Generation, now: float) -> bool:
        """Whether the usage log lists this generation yet (on acceptance, or only once it ended)."""
        config, entry = self.faults.config, generation.entry
        if config.log_visibility == "at_completion":
            return entry.completed_at is not None and now >= entry.completed_at + config.log_delay_seconds
        return now >= entry.accepted_at + config.log_delay_seconds

    async def logs(self, request: Request) -> Response:
        if denied := self.denied(request):
            return denied
        if limited := self.log_rate_limited(request):
            return limited
        fault = self.faults.draw("logs")
        if fault in REJECTING_KINDS:
            return self.rejection(request, fault)
        query = request.query_params
        statuses = query.getlist("status")
        try:
            offset, limit = int(query.get("offset", 0)), int(query.get("limit", 100))
        except ValueError:
            return self.error(request, 400, "Query validation error: offset and limit must be integers")
        if offset < 0 or not 1 <= limit <= 1000:
            return self.error(request, 400, "Query validation error: offset must be >= 0 and limit in [1, 1000]")
        if unknown := set(statuses) - set(LOG_STATUS.values()):
            return self.error(
                request,
                400,
                f"Query validation error: status must be one of pending, succeeded, failed, not {sorted(unknown)}",
            )
        now, shape = time.time(), self.faults.config.log_row_shape
        listed = [log_row(g.entry, shape) for g in self.engine.generations.values() if self.visible(g, now)]
        listed = sorted(listed + self.engine.refused, key=lambda row: row["time"], reverse=True)  # newest first
        rows = [
            row
            for row in listed
            if (not statuses or row["status"] in statuses)
            and query.get("model", row["model"]) == row["model"]
            and query.get("client_request_id", row["client_request_id"]) == row["client_request_id"]
        ]
        body = {"data": rows[offset : offset + limit], "total": len(rows), "offset": offset, "limit": limit}
        return await self.respond(request, fault, body, {})

    async def download(self, request: Request) -> Response:
        token = request.path_params["token"]
        if not self.engine.files.verify(
            token, request.query_params.get("Expires"), request.query_params.get("Signature")
        ):
            return self.error(request, 403, "Access denied: the link has expired or its signature does not match")
        path = self.engine.result_path(token)
        if path is None:
            return self.error(request, 404, "File not found")
        fault = self.faults.draw("download") if request.method == "GET" else None
        if fault in REJECTING_KINDS:
            return self.rejection(request, fault)
        if fault == "slow_response":
            await linger(request, self.faults.config.slow_seconds)
        if fault in ("drop_connection", "truncated_download"):
            size = path.stat().st_size
            with path.open("rb") as file:
                return AbortedResponse(file.read(size // 2), size, "video/mp4")
        if fault == "drip_download":  # a CDN that never stalls long enough for a read timeout
            return StreamingResponse(drip(path.read_bytes(), self.faults.config.drip_bytes_per_second),
                                     media_type="video/mp4", headers={"content-length": str(path.stat().st_size)})
        return FileResponse(path, media_type="video/mp4")

    # -- sandbox control -------------------------------------------------------------------------

    async def ledger(self, _request: Request) -> Response:
        entries = [g.entry.model_dump(mode="json") for g in self.engine.generations.values()]
        return JSONResponse({"entries": entries, "max_in_flight": self.engine.max_in_flight,
                             "refused": self.engine.refused, "log_reads": self.log_counts,
                             "faults_injected": dict(self.faults.injected)})

    async def reset(self, _request: Request) -> Response:
        """Back to the state at start: empty ledger, no files, the startup fault settings."""
        self.engine.reset()
        self.faults = FaultInjector(self.config.faults)
        self.log_reads.clear()
        self.log_counts = dict.fromkeys(LOG_COUNTS, 0)
        return JSONResponse({"status": "reset"})

    async def get_faults(self, _request: Request) -> Response:
        return JSONResponse(self.faults.config.model_dump(mode="json"))

    async def set_faults(self, request: Request) -> Response:
        try:
            config = FaultConfig.model_validate_json(await request.body())
        except ValidationError as exc:
            return self.error(request, 422, "Fault configuration is invalid", errors=field_errors(exc))
        self.faults = FaultInjector(config)
        return JSONResponse(config.model_dump(mode="json"))

    async def health(self, _request: Request) -> Response:
        return JSONResponse(
            {"status": "ok", "in_flight": self.engine.in_flight, "credits_left": self.engine.credits_left()}
        )

    def routes(self) -> list[Route]:
        return [
            Route("/v2/video/generations", self.submit, methods=["POST"]),
            Route("/v2/video/generations", self.poll, methods=["GET"]),
            Route("/v2/logs", self.logs, methods=["GET"]),
            Route("/files/{token}.mp4", self.download, methods=["GET", "HEAD"]),
            Route("/sandbox/ledger", self.ledger, methods=["GET"]),
            Route("/sandbox/reset", self.reset, methods=["POST"]),
            Route("/sandbox/faults", self.get_faults, methods=["GET"]),
            Route("/sandbox/faults", self.set_faults, methods=["POST"]),
            Route("/sandbox/health", self.health, methods=["GET"]),
        ]


def create_app(config: SandboxConfig | None = None) -> ASGIApp:
    """The sandbox as an ASGI app; its state lives from lifespan startup to shutdown."""
    sandbox = SandboxApp(config or SandboxConfig())
    app = Starlette(
        routes=sandbox.routes(),
        lifespan=sandbox.lifespan,
        exception_handlers={HTTPException: sandbox.http_error, Exception: sandbox.http_error},
    )
    return RequestIds(app)
