"""What can go wrong, as exception types a caller (or a retry policy) can act on.

Each message says what happened and what to do. None of them ever holds the API key, a signed
URL or a data URI: messages are built from safe fields and passed through `redact`. Every one is
exported from `prefect_aimlapi_video`. `retryable` tells a task's retry policy whether trying
again can help; a paid one (`generation_id` set) names the collect command once the flow knows it.

    AimlApiError                      the base: catch this for anything of ours
    |- InvalidInputError (ValueError) bad input, refused before anything is paid
    |- BudgetExceeded                 would pass the spend cap: not sent, nothing charged
    |- AuthenticationError            the key was refused (401/403): nothing sent
    |- OutOfCreditsError              the account has run out of credits
    |- InvalidRequestError            the provider refused the request (400/422): nothing charged
    |- NotFoundError                  no such generation (404)
    |- RateLimitedError               429: retryable, after `retry_after`
    |- TransientApiError              network faults and 5xx where no POST is in doubt: retryable
    |- SubmissionOutcomeUnknown       a POST may or may not have been accepted: reconciled, never resent blind
    |  `- ProviderSubmitError         the provider's own 500/503 to a POST
    |- UnidentifiedGenerationError    accepted, but the answer carried no generation id
    |- ReconciliationUnavailable      the usage log cannot tell whether a POST was accepted
    |- GenerationNotRecorded          accepted, but the record could not be written: collect it
    |- GenerationFailedError          the provider says the generation failed
    |- GenerationTimeoutError         still running when the wait ended: run again, or collect it
    |- DownloadError                  the result could not be fetched (retryable unless `permanent`)
    |- DeliveryFailed                 paid, but storing the result failed: collect it
    `- BatchFailedError               some generations of a batch failed (the others were kept)
"""

from __future__ import annotations

from typing import Any

from prefect_aimlapi_video.api.redact import redact


class AimlApiError(Exception):
    """Base class. `retryable` tells a retry policy whether trying again can help."""

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        request_id: str | None = None,
    ) -> None:
        self.status_code = status_code
        self.request_id = request_id
        suffix = f" (x-request-id: {request_id})" if request_id else ""
        super().__init__(redact(message) + suffix)

    collect_command: str | None = None
    # The paid generation this failure leaves behind: set by the types that always have one, and by
    # `name_collect_command` on any other (a poll or download failing after acceptance), so that a
    # batch's row keeps the id and not only a message it may have to shorten.
    generation_id: str | None = None

    def name_collect_command(self, command: str, generation_id: str | None = None) -> None:
        """A paid generation is left behind: end the message with the command that collects it at no
        new cost (replacing a less exact one named before), so whoever reads only this one line (a
        terminal, a failed state) knows what to do."""
        self.generation_id = self.generation_id or generation_id
        if command in str(self):
            return
        message = str(self)
        if self.collect_command is not None:
            message = message.removesuffix(f"{_COLLECT} {self.collect_command}").rstrip()
        self.collect_command = command
        self.args = (f"{message} {_COLLECT} {command}".strip(),)


_COLLECT = "Collect it without a new charge:"


class InvalidInputError(AimlApiError, ValueError):
    """Our own validation refused the input before any network call: nothing was spent."""


class AuthenticationError(AimlApiError):
    """401/403: the key is missing, wrong or not allowed. Retrying cannot help."""


class OutOfCreditsError(AimlApiError):
    """403 "You've run out of credits". Retrying cannot help until the account is topped up."""


class InvalidRequestError(AimlApiError):
    """400/422: the provider refused the request body. Nothing was charged; fix the input."""


class NotFoundError(AimlApiError):
    """404: the provider does not know this generation id."""


class RateLimitedError(AimlApiError):
    """429: too many requests. `retry_after` is the server's hint in seconds, when it sent one."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class TransientApiError(AimlApiError):
    """5xx or a network failure where the request certainly was not accepted (safe to resend)."""

    retryable = True


class SubmissionOutcomeUnknown(AimlApiError):
    """A POST may have been accepted (and will then be charged), but we cannot tell.

    Its answer was lost (a reset or timeout after sending), unreadable, or came from a gateway
    (502/504, or any answer not in the provider's own JSON error shape): a gateway's answer says
    nothing about whether the provider behind it accepted the request. Never resend blindly:
    reconcile through the usage log with `client_request_id` first.
    """

    retryable = True

    def __init__(self, message: str, *, client_request_id: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.client_request_id = client_request_id


class ProviderSubmitError(SubmissionOutcomeUnknown):
    """The provider itself answered the POST with 500 or 503 in its documented JSON error shape.

    An unknown outcome like any other: a provider may accept a request and still fail to answer it,
    and a usage log that lists requests only when they complete cannot show it seconds later. It is
    sent again at once only if the log lists this request as failed, else after the same wait.
    """


class GenerationNotRecorded(AimlApiError):
    """The provider accepted the POST, but its record could not be written before the deadline.

    Not retryable: the generation exists and is paid for (or will be when it completes); a retry
    could not prove that and might send it again. The message names the generation and the
    client request id; collect it by id.
    """

    def __init__(self, generation_id: str, client_request_id: str, store: str, cause: str) -> None:
        self.generation_id = generation_id
        self.client_request_id = client_request_id
        super().__init__(
            f"Generation {generation_id} was accepted (client request id {client_request_id}) but its record could "
            f"not be written to {store} ({cause}). It is paid for, or will be when it completes: do not run it "
            "again."
        )
        self.name_collect_command(f"aimlapi-video collect {generation_id}")


class UnidentifiedGenerationError(AimlApiError):
    """The usage log lists our request but no generation id we can recognise in its row.

    Failing closed: the request was accepted (and may be charged), so it is never sent again; the
    message names the client request id so a person can find the generation and collect it.
    """


class ReconciliationUnavailable(AimlApiError):
    """The usage log could not be read, so an ambiguous POST cannot be resolved safely.

    Retryable: a retry only reads the log again (nothing is sent until the log has answered).
    """

    retryable = True


class GenerationFailedError(AimlApiError):
    """The generation ended with status `error`. Failed generations are not charged."""

    def __init__(self, generation_id: str, name: str, detail: str, raw: Any = None) -> None:
        self.generation_id = generation_id
        self.error_name = redact(name)
        self.error_message = redact(detail)
        self.raw = raw
        super().__init__(f"Generation {generation_id} failed: {name}: {detail}")


class GenerationTimeoutError(AimlApiError):
    """We stopped waiting; the generation may still finish (and be charged) on the provider's side."""

    def __init__(self, generation_id: str, waited_seconds: float, last_status: str) -> None:
        self.generation_id = generation_id
        super().__init__(
            f"Timed out after {waited_seconds:.0f} s waiting for generation {generation_id} "
            f"(last status {last_status!r}). It may still complete: re-run this flow run to resume "
            f"waiting on the same generation without a new charge, or raise `timeout_seconds`."
        )


class DownloadError(AimlApiError):
    """The result could not be downloaded or failed verification; no partial file is left behind.

    Retryable unless `permanent` (over the size cap, a non-http(s) URL, a redirect loop, not an
    MP4): a retry fetches a fresh result URL, which cures expired links and cut transfers.
    """

    def __init__(self, message: str, *, permanent: bool = False, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retryable = not permanent


class DeliveryFailed(AimlApiError):
    """A paid generation could not be delivered where it was asked for (the output went away, the disk
    filled, a store refused the write). It is paid for: collect it; running it again pays nothing."""

    def __init__(self, generation_id: str, cause: BaseException) -> None:
        self.generation_id = generation_id
        super().__init__(f"Generation {generation_id} is paid for, but delivering it failed: {type(cause).__name__}: "
                         f"{cause}.")


class BudgetExceeded(AimlApiError):
    """Sending this generation could pass the spend cap: it was not sent (and nothing was charged)."""

    def __init__(self, message: str, *, spent: float, reserved: float, estimate: float, cap: float) -> None:
        super().__init__(message)
        self.spent, self.reserved, self.estimate, self.cap = spent, reserved, estimate, cap


class BatchFailedError(AimlApiError):
    """Some generations of a batch failed (the others completed and were kept)."""
