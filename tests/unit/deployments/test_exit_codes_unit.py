"""deployments.exit_codes: one rule for every command's exit code, decided from what is certain.

2 only when nothing was sent to the provider (our own checks, the spend cap, the free access
check), 1 once a generation request was sent or may have been, 130 for Ctrl-C. The same 401 is a 2
from the access check and a 1 from a POST, a poll or a usage-log read (which can follow a POST whose
outcome is unknown): told apart by who raised it, with real client calls over a MockTransport.
"""

from __future__ import annotations

import httpx
import pytest

from prefect_aimlapi_video.api.client import AimlApiClient
from prefect_aimlapi_video.api.errors import (
    AimlApiError,
    AuthenticationError,
    BudgetExceeded,
    DeliveryFailed,
    DownloadError,
    GenerationFailedError,
    GenerationNotRecorded,
    GenerationTimeoutError,
    InvalidInputError,
    InvalidRequestError,
    NotFoundError,
    OutOfCreditsError,
    ProviderSubmitError,
    RateLimitedError,
    ReconciliationUnavailable,
    SubmissionOutcomeUnknown,
    TransientApiError,
    UnidentifiedGenerationError,
)
from prefect_aimlapi_video.blocks import AimlApiCredentials
from prefect_aimlapi_video.deployments import cli
from prefect_aimlapi_video.deployments.cli_options import COLLECT_EXIT_CODES, EXIT_CODES
from prefect_aimlapi_video.deployments.exit_codes import exit_code, nothing_sent

GEN = "3637be63-e8d1-4ac1-9a4b-00afbdf10a55:krea/krea-wan-14b/video-to-video"
BASE_URL = "https://api.test"


def named(exc: AimlApiError) -> AimlApiError:
    """As the flow leaves a failure once a generation exists: its collect command named."""
    exc.name_collect_command(f"aimlapi-video collect {GEN}")
    return exc


def raised_while(exc: BaseException, during: BaseException) -> BaseException:
    try:
        try:
            raise during
        except BaseException:
            raise exc  # noqa: B904 - the implicit context is the point
    except BaseException as caught:
        return caught


def budget() -> BudgetExceeded:
    return BudgetExceeded("over the cap", spent=1, reserved=0, estimate=5, cap=3)


CASES = [
    # refused before anything was sent: fix it and run again
    ("our own input check", InvalidInputError("prompt is empty"), 2),
    ("the spend cap", budget(), 2),
    # a request was sent, or may have been
    ("a 401 not from the access check", AuthenticationError("the AI/ML API rejected the API key (401)"), 1),
    ("out of credits at the POST", OutOfCreditsError("you've run out of credits (403)"), 1),
    ("the provider refused the body", InvalidRequestError("refused (422)"), 1),
    ("no such generation", NotFoundError("not found (404)"), 1),
    ("rate limited", RateLimitedError("rate limited (429)"), 1),
    ("a network fault", TransientApiError("network error"), 1),
    ("a POST with an unknown outcome", SubmissionOutcomeUnknown("lost answer", client_request_id="v2v-k-a1"), 1),
    ("the provider's own 500 to a POST", ProviderSubmitError("500", client_request_id="v2v-k-a1"), 1),
    ("the usage log cannot be read", ReconciliationUnavailable("log unreadable"), 1),
    ("accepted, no id recognised", UnidentifiedGenerationError("row without an id"), 1),
    ("accepted, not recorded", GenerationNotRecorded(GEN, "v2v-k-a1", "/records", "disk full"), 1),
    ("the generation failed", GenerationFailedError(GEN, "error", "model crashed"), 1),
    ("the wait ended", GenerationTimeoutError(GEN, 1200, "generating"), 1),
    ("the download failed", named(DownloadError("truncated")), 1),
    ("storing it failed", DeliveryFailed(GEN, OSError("disk full")), 1),
    ("anything else of ours", AimlApiError("unexpected answer 418"), 1),
    # what a message or a type alone would get wrong
    ("an input error naming a paid generation", named(InvalidInputError("output gone")), 1),
    ("a budget error naming a client request", (lambda e: (setattr(e, "client_request_id", "v2v-k-a2"), e)[1])(budget()), 1),
    ("an input error raised over an unknown outcome",
     raised_while(InvalidInputError("x"), SubmissionOutcomeUnknown("lost", client_request_id="v2v-k-a1")), 1),
    ("Ctrl-C", KeyboardInterrupt(), 130),
]


@pytest.mark.parametrize(("failure", "code"), [pytest.param(exc, code, id=name) for name, exc, code in CASES])
def test_the_table(failure, code):
    assert exit_code(failure) == code


def client_answering(status: int, body: dict) -> AimlApiClient:
    return AimlApiClient("sk-unit-exit-codes", BASE_URL, transport=httpx.MockTransport(
        lambda request: httpx.Response(status, json=body, request=request)))


async def caught(call) -> BaseException:
    with pytest.raises(AimlApiError) as raised:
        await call
    return raised.value


async def test_a_key_refused_by_the_access_check_is_2_and_the_same_401_elsewhere_is_1():
    refusal = {"message": "Invalid API key"}
    async with client_answering(401, refusal) as client:
        from_check = await caught(client.check_access())
        from_post = await caught(client.submit({"model": "m", "prompt": "x", "video": "https://v"},
                                               client_request_id="v2v-k-a1"))
        from_poll = await caught(client.get_generation(GEN))
        from_log = await caught(client.read_log_page(0, 10))
    assert all(isinstance(e, AuthenticationError) for e in (from_check, from_post, from_poll))
    assert isinstance(from_log, (AuthenticationError, ReconciliationUnavailable))  # (today: the latter)
    assert exit_code(from_check) == 2 and nothing_sent(from_check)
    assert [exit_code(e) for e in (from_post, from_poll, from_log)] == [1, 1, 1]


async def test_out_of_credits_at_the_access_check_is_2():
    async with client_answering(403, {"message": "You've run out of credits"}) as client:
        refused = await caught(client.check_access())
    assert isinstance(refused, OutOfCreditsError) and exit_code(refused) == 2


async def test_the_blocks_shared_check_keeps_who_raised_it(monkeypatch):
    """The flow calls the block's check, which awaits one shared future: the refusal still reads as
    the access check's, and a paid generation named on it afterwards still makes it a 1."""
    monkeypatch.setattr(AimlApiCredentials, "_access_checks", {})
    monkeypatch.setattr(AimlApiCredentials, "get_client", lambda self: client_answering(401, {"message": "no"}))
    refused = await caught(AimlApiCredentials(api_key="sk-wrong", base_url=BASE_URL).check_access())
    assert exit_code(refused) == 2
    assert exit_code(named(refused)) == 1


def test_the_cli_ends_with_one_line_and_the_rules_code(monkeypatch, capsys):
    monkeypatch.setattr(cli, "note_temporary_server", lambda: False)
    monkeypatch.setattr(cli, "flush_prefect", lambda: None)

    async def failing(exc: BaseException):
        raise exc

    for name, failure, code in CASES:
        assert cli._report(failing(failure), interrupted="interrupted; run it again.") == code, name
        last = capsys.readouterr().err.splitlines()[-1]
        assert last.startswith("error: ") and (last == "error: interrupted; run it again." if code == 130 else
                                               str(failure).split()[0] in last), name


@pytest.mark.parametrize(("argv", "epilog"), [([], EXIT_CODES), (["run"], EXIT_CODES),
                                              (["collect"], COLLECT_EXIT_CODES)])
def test_help_prints_the_rule(argv, epilog, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main([*argv, "--help"])
    assert exited.value.code == 0
    assert epilog in capsys.readouterr().out
    for code in ("0", "2", "1", "130"):
        assert f"\n  {code} " in epilog
