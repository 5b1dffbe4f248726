"""Bad input: each kind gives a specific error before any charge, through the flow and through the CLI.

Issue: "at least 15 kinds (empty or huge prompt; strength 1.5, NaN, "high"; float seed; missing local
file; a non-video file; ftp:// or file:// URL; malformed or oversized data URI; missing S3 object;
unknown credentials block; unreachable base URL; wrong key) give a specific error before any charge,
and a non-zero exit with a one-line reason from the CLI."

The CLI runs (one `aimlapi-video run` subprocess per case) are started together, once, against a
sandbox of their own whose ledger must stay empty; each parametrised test then checks its case.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from prefect_aimlapi_video.api.errors import AuthenticationError, InvalidInputError
from prefect_aimlapi_video.blocks import AimlApiCredentials
from prefect_aimlapi_video.deployments.cli_options import LIMIT_FLAGS
from prefect_aimlapi_video.flows.video_to_video import video_to_video
from prefect_aimlapi_video.media.video_checks import MAX_DATA_URI_BYTES
from prefect_aimlapi_video.sandbox import make_test_clip
from tests.support import prefect_api
from tests.support.local_services import free_port
from tests.support.loopback_only import loopback_only
from tests.support.reliability import cli_command, last_line, subprocess_env

pytestmark = pytest.mark.integration

WRONG_KEY = "sk-wrong-0000"
# A command-line argument holds at most 128 KiB (Linux MAX_ARG_STRLEN), so the CLI's oversized data
# URI case runs the same CLI with the inline cap lowered to 64 KiB and sends ~96 KiB.
CLI_INLINE_CAP = 64 * 1024
CLI_WITH_LOWER_CAP = (
    "import sys, prefect_aimlapi_video.media.video_checks as checks; checks.MAX_DATA_URI_BYTES = %d; "
    "from prefect_aimlapi_video.deployments.cli import main; sys.exit(main())" % CLI_INLINE_CAP
)


@dataclass
class Ctx:
    """Everything the cases refer to; built once per module."""

    tmp: Path
    clip: Path
    base_url: str
    api_key: str
    dead_url: str
    bucket: str
    redirector: str = ""  # a loopback server whose answers redirect to where no fetch may go
    files: dict[str, Path] = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    arguments: Any  # Ctx -> overrides of the flow's arguments (credentials as "wrong key" / "dead url")
    match: str  # the specific reason, as a regex over the error message
    error: type[Exception] = InvalidInputError
    cli_match: str | None = None  # when the CLI's reason differs (argument parsing)
    via_cli: bool = True  # the CLI has an option for it
    via_flow: bool = True  # the flow takes it (False: only a command-line argument can be this wrong)
    cli_extra: tuple[str, ...] = ()  # command-line arguments of the case beyond the flow's


def _oversized_data_uri(cap: int) -> str:
    """A base64 data URI whose payload decodes to a little more than `cap` bytes."""
    return "data:video/mp4;base64," + "A" * (cap // 3 * 4 + 4096)


def _data_uri(payload: bytes, mime: str = "video/mp4") -> str:
    return f"data:{mime};base64,{base64.b64encode(payload).decode()}"


CASES: dict[str, Case] = {
    "empty prompt": Case(lambda c: dict(prompt="   "), r"prompt is empty"),
    "huge prompt": Case(lambda c: dict(prompt="x" * 5000), r"prompt has 5000 characters; the maximum is 2000"),
    "strength 1.5": Case(lambda c: dict(strength=1.5), r"strength must be between 0 and 1.*1\.5"),
    "strength NaN": Case(lambda c: dict(strength=float("nan")), r"strength must be between 0 and 1.*nan"),
    "strength text": Case(lambda c: dict(strength="high"), r"strength must be a number.*'high'",
                          cli_match=r"strength.*'high'"),
    "float seed": Case(lambda c: dict(seed=1.5), r"seed must be a whole number.*1\.5", cli_match=r"seed.*'1\.5'"),
    "negative seed": Case(lambda c: dict(seed=-3), r"seed must be between 0 and \d+, got -3"),
    "missing local file": Case(lambda c: dict(video=str(c.tmp / "nowhere" / "clip.mp4")), r"does not exist"),
    "empty local file": Case(lambda c: dict(video=str(c.files["empty"])), r"is empty"),
    "non-video file": Case(lambda c: dict(video=str(c.files["text"])), r"not a readable video"),
    "ftp url": Case(lambda c: dict(video="ftp://example.com/clip.mp4"), r"scheme 'ftp' is not supported"),
    "file url": Case(lambda c: dict(video=f"file://{c.clip}"), r"scheme 'file' is not supported"),
    "plain http url": Case(lambda c: dict(video="http://example.com/clip.mp4"), r"must be https"),
    "malformed data uri": Case(lambda c: dict(video="data:video/mp4"), r"malformed data URI"),
    "data uri bad base64": Case(lambda c: dict(video="data:video/mp4;base64,@@not*base64@@"),
                                r"invalid base64 payload"),
    "data uri not a video": Case(lambda c: dict(video=_data_uri(b"hello world", "text/plain")),
                                 r"media type 'text/plain'"),
    "oversized data uri": Case(lambda c: dict(video=_oversized_data_uri(MAX_DATA_URI_BYTES)), r"above the \d+-byte cap"),
    "missing s3 object": Case(lambda c: dict(video=f"s3://{c.bucket}/missing/clip.mp4"), r"no such object"),
    "missing s3 bucket": Case(lambda c: dict(video=f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/clip.mp4"),
                              r"bucket does not exist|no such object \(or bucket\)"),
    "unknown credentials block": Case(lambda c: dict(credentials="no-such-block-v2v"),
                                      r"No AimlApiCredentials block named 'no-such-block-v2v'"),
    "unreachable base url": Case(lambda c: dict(credentials="dead url"), r"cannot connect.*Check base_url"),
    "wrong key": Case(lambda c: dict(credentials="wrong key"), r"rejected the API key", error=AuthenticationError),
    "bad output template": Case(lambda c: dict(output=str(c.tmp / "{nope}.mp4")), r"unknown field 'nope'"),
    # settings, as a deployment, the UI or a trigger may send them: refused before anything is paid
    "zero timeout": Case(lambda c: dict(settings=dict(timeout_seconds=0)), r"timeout_seconds: .*greater than 0"),
    "negative timeout": Case(lambda c: dict(settings=dict(timeout_seconds=-5)), r"timeout_seconds: .*greater than 0"),
    "timeout text": Case(lambda c: dict(settings=dict(timeout_seconds="soon")), r"timeout_seconds: must be a number",
                         via_cli=False),
    "poll policy not json": Case(lambda c: dict(settings=dict(poll_policy="every second")),
                                 r"poll_policy: must be a PollPolicy", via_cli=False),
    "poll policy bad field": Case(lambda c: dict(settings=dict(poll_policy={"initial_seconds": -1})),
                                  r"poll_policy.initial_seconds: .*greater than 0", via_cli=False),
    "negative reconcile wait": Case(lambda c: dict(settings=dict(reconcile_grace_seconds=-1)),
                                    r"reconcile_grace_seconds: .*greater than or equal to 0", via_cli=False),
    "presign beyond s3 limit": Case(lambda c: dict(settings=dict(presign_expiry_seconds=10**7)),
                                    r"presign_expiry_seconds: .*less than or equal to 604800", via_cli=False),
    "unknown record store": Case(lambda c: dict(settings=dict(submissions="gs://bucket/records")),
                                 r"submissions:? 'gs://bucket/records': use a local directory or s3://bucket/prefix"),
    # outputs: whatever would fail after paying is tried first
    "output under a file": Case(lambda c: dict(output=str(c.files["text"] / "out.mp4")), r"cannot write to"),
    "output name too long": Case(lambda c: dict(output=str(c.tmp / ("x" * 300 + ".mp4"))),
                                 r"a file name it makes can be \d+ bytes"),
    "output on a read-only filesystem": Case(lambda c: dict(output="/proc/aimlapi-out/{stem}.mp4"), r"cannot write to"),
    "template format spec": Case(lambda c: dict(output=str(c.tmp / "{stem:>300}.mp4")), r"takes no format spec"),
    "template attribute": Case(lambda c: dict(output=str(c.tmp / "{stem.__class__}.mp4")),
                               r"only plain \{field\} names"),
    "template index": Case(lambda c: dict(output=str(c.tmp / "{stem[0]}.mp4")), r"only plain \{field\} names"),
    "template conversion": Case(lambda c: dict(output=str(c.tmp / "{stem!r}.mp4")), r"takes no format spec"),
    "template unbalanced": Case(lambda c: dict(output=str(c.tmp / "{stem.mp4")), r"is malformed"),
    "output to a missing bucket": Case(lambda c: dict(output=f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/o.mp4"),
                                       r"bucket does not exist"),
    # what the input is: refused before it is paid for by the second
    "two-hour input": Case(lambda c: dict(video=str(c.files["long"])), r"7,201\.0 s long, above max_duration_seconds"),
    "8K frame": Case(lambda c: dict(video=str(c.files["8k"])), r"8192x4320, above 1920x1080"),
    "oversize S3 object": Case(lambda c: dict(video=f"s3://{c.bucket}/present/clip.mp4",
                                              settings={"limits": {"max_input_bytes": 1000}}),
                               r"above max_input_bytes"),
    "estimate above the ceiling": Case(lambda c: dict(settings={"limits": {"max_generation_usd": 0.001}}),
                                       r"estimated at \$0\.02 .*above max_generation_usd"),
    "negative duration limit": Case(lambda c: dict(settings={"limits": {"max_duration_seconds": -1}}),
                                    r"limits.max_duration_seconds: .*greater than 0",
                                    cli_match=r"limits.max_duration_seconds: .*greater than 0"),
    "control characters in prompt": Case(lambda c: dict(prompt="ink\x1b[31mred"), r"control characters \(U\+001B\)"),
    "seed too large": Case(lambda c: dict(seed=2**32), r"seed must be between 0 and 4294967295"),
    "negative strength": Case(lambda c: dict(strength=-0.1), r"strength must be between 0 and 1"),
    "input redirecting to the metadata address": Case(lambda c: dict(video=f"{c.redirector}/to-metadata.mp4"),
                                                      r"refusing to fetch http://169\.254\.169\.254/.*link-local"),
    "input redirecting to a private address": Case(lambda c: dict(video=f"{c.redirector}/to-private.mp4"),
                                                   r"refusing to fetch https://10\.0\.0\.1/.*private"),
    "input redirecting to public plain http": Case(lambda c: dict(video=f"{c.redirector}/to-plain-http.mp4"),
                                                   r"refusing to fetch http://93\.184\.215\.14/.*plain http"),
    "unknown model": Case(lambda c: dict(model="acme/never"), r"model 'acme/never' is not supported",
                          cli_match=r"invalid choice: 'acme/never'"),
    "overrides unknown key": Case(lambda c: dict(overrides={"strenght": 0.3}), r"overrides has unknown keys",
                                  via_cli=False),
    "idempotency key too long": Case(lambda c: dict(idempotency_key="k" * 600),
                                     r"idempotency_key: .*at most 512 characters"),
    "budget name with spaces": Case(lambda c: dict(settings=dict(budget="my budget")), r"budget: .*match pattern",
                                    via_cli=False),
    "base url not a url": Case(lambda c: {}, r"base_url must be an https URL.*'not a url'", via_flow=False,
                               cli_extra=("--base-url", "not a url")),
    "base url plain http off loopback": Case(lambda c: {}, r"base_url must be an https URL.*'http://example.com'",
                                             via_flow=False, cli_extra=("--base-url", "http://example.com")),
}
# What the CLI can only find out through Prefect, S3 or the API; every other case it answers before
# importing more than the request and the video checks, with no Prefect server started.
NEEDS_SERVICES = {"missing s3 object", "missing s3 bucket", "unknown credentials block", "unreachable base url",
                  "wrong key", "output to a missing bucket", "oversize S3 object", "estimate above the ceiling",
                  "input redirecting to the metadata address", "input redirecting to a private address",
                  "input redirecting to public plain http"}
# Output directories are tried by writing to them: the offline checks cannot know a path is unusable.
NEEDS_SERVICES |= {"output under a file", "output name too long", "output on a read-only filesystem"}


def two_hour_header(path: Path) -> None:
    """Two tiny frames, the second stamped at 7,200 s: a file of 1.5 kB whose header says 7,201 s."""
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=1)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for pts in (0, 7200):
            frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            frame.pts = pts
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


REDIRECTS = {"/to-metadata.mp4": "http://169.254.169.254/latest/meta-data/",
             "/to-private.mp4": "https://10.0.0.1/clip.mp4",
             "/to-plain-http.mp4": "http://93.184.215.14/clip.mp4"}


@contextlib.contextmanager
def redirector() -> Iterator[str]:
    """A loopback HTTP server that answers each path in `REDIRECTS` with a 302 there."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(302)
            self.send_header("Location", REDIRECTS.get(self.path, "/"))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def flow_arguments(ctx: Ctx, name: str) -> dict[str, Any]:
    arguments: dict[str, Any] = dict(video=str(ctx.clip), prompt="watercolor", credentials=None,
                                     output=str(ctx.tmp / "outputs" / f"{uuid.uuid4().hex}.mp4"))
    arguments.update(CASES[name].arguments(ctx))
    credentials = arguments["credentials"]
    key, base_url = ctx.api_key, ctx.base_url
    if credentials == "wrong key":
        key = WRONG_KEY
    if credentials == "dead url":
        base_url = ctx.dead_url
    if credentials in (None, "wrong key", "dead url"):
        arguments["credentials"] = AimlApiCredentials(api_key=key, base_url=base_url, timeout_seconds=5)
    return arguments


def cli_invocation(ctx: Ctx, name: str) -> tuple[list[str], dict[str, str]]:
    """`aimlapi-video run ...` for a case (the key in AIMLAPI_API_KEY, as the README says)."""
    arguments = flow_arguments(ctx, name)
    credentials = arguments["credentials"]
    command = cli_command()
    video = arguments["video"]
    if name == "oversized data uri":
        command = [sys.executable, "-c", CLI_WITH_LOWER_CAP]
        video = _oversized_data_uri(CLI_INLINE_CAP)
    argv = [*command, "run", video, "--prompt", arguments["prompt"], "--output", arguments["output"]]
    for option, flag in (("strength", "--strength"), ("seed", "--seed"), ("model", "--model"),
                         ("idempotency_key", "--idempotency-key")):
        if option in arguments:
            argv += [flag, str(arguments[option])]
    settings = arguments.get("settings", {})
    for option, flag in (("timeout_seconds", "--timeout"), ("submissions", "--submissions")):
        if option in settings:
            argv += [flag, str(settings[option])]
    for flag, limit in LIMIT_FLAGS.items():
        if limit in settings.get("limits", {}):
            argv += [flag, str(settings["limits"][limit])]
    env = {"AIMLAPI_API_KEY": ctx.api_key}
    if CASES[name].cli_extra:
        argv += list(CASES[name].cli_extra)
    elif isinstance(credentials, str):
        argv += ["--credentials", credentials]
    else:
        argv += ["--base-url", credentials.base_url]
        env["AIMLAPI_API_KEY"] = credentials.api_key.get_secret_value()
    return argv, env


@pytest.fixture(scope="module")
def ctx(prefect_server, moto_server, clips, tmp_path_factory, sandbox_server):
    import boto3

    tmp = tmp_path_factory.mktemp("bad-input")
    bucket = f"bad-input-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3", endpoint_url=moto_server)
    s3.create_bucket(Bucket=bucket)
    s3.upload_file(str(clips["small"]), bucket, "present/clip.mp4", ExtraArgs={"ContentType": "video/mp4"})
    files = {"empty": tmp / "empty.mp4", "text": tmp / "notes.mp4", "long": tmp / "long.mp4", "8k": tmp / "8k.mp4"}
    files["empty"].write_bytes(b"")
    files["text"].write_text("this is a shopping list, not a video\n" * 20)
    two_hour_header(files["long"])
    make_test_clip(files["8k"], width=8192, height=4320, seconds=0.1, fps=10)
    with redirector() as redirects:
        yield Ctx(tmp=tmp, clip=Path(clips["small"]), base_url=sandbox_server.base_url,
                  api_key=sandbox_server.api_key, dead_url=f"http://127.0.0.1:{free_port()}", bucket=bucket,
                  files=files, redirector=redirects)
    for item in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
        s3.delete_object(Bucket=bucket, Key=item["Key"])
    s3.delete_bucket(Bucket=bucket)


@pytest.fixture(scope="module")
def cli_results(ctx):
    """Every case through the CLI, against a sandbox of its own; (results by case, that sandbox's ledger)."""
    from prefect_aimlapi_video.sandbox import SandboxConfig, run_sandbox

    with run_sandbox(SandboxConfig(processing_seconds=0.3)) as own:
        cli_ctx = Ctx(**{**ctx.__dict__, "base_url": own.base_url, "api_key": own.api_key})
        env = subprocess_env()

        def run(name: str) -> subprocess.CompletedProcess:
            argv, extra = cli_invocation(cli_ctx, name)
            environment = {**env, **extra}
            if name not in NEEDS_SERVICES:  # no Prefect server configured: using one would start a temporary one
                environment.pop("PREFECT_API_URL", None)
                environment["PREFECT_HOME"] = str(cli_home(ctx, name))
            return subprocess.run(argv, env=environment, cwd=ctx.tmp, capture_output=True, text=True, timeout=120)

        names = [name for name, case in CASES.items() if case.via_cli]
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = dict(zip(names, pool.map(run, names)))
        yield results, own.ledger()


def test_the_table_has_at_least_forty_kinds():
    assert len(CASES) >= 40


@pytest.mark.parametrize("name", [name for name, case in CASES.items() if case.via_flow])
async def test_bad_input_through_the_flow(prefect_server, sandbox, ctx, name):
    case = CASES[name]
    arguments = flow_arguments(ctx, name)
    with loopback_only() as connections:
        try:
            await video_to_video(**arguments)
        except Exception as exc:  # noqa: BLE001 - reported below, shortened (a data URI can be megabytes)
            error = exc
        else:
            pytest.fail("the flow accepted the input")
    assert connections.off_loopback == []  # refused before anything could be fetched from off this machine
    message = str(error)
    assert isinstance(error, case.error), f"{type(error).__name__} instead of {case.error.__name__}: {message[:400]}"
    assert re.search(case.match, message), message[:400]
    assert "\n" not in message.strip()
    assert sandbox.ledger() == []  # nothing accepted, nothing charged
    assert not os.path.lexists(arguments["output"]) if len(Path(arguments["output"]).name) < 255 else True
    run = await prefect_api.latest_flow_run("aimlapi-video-to-video")
    assert run.state.is_failed() and re.search(case.match, run.state.message or ""), run.state.message
    assert await prefect_api.task_runs(run.id) == {}  # refused before the submit task existed


def cli_home(ctx: Ctx, name: str) -> Path:
    return ctx.tmp / "homes" / re.sub(r"\W+", "-", name)


@pytest.mark.parametrize("name", [name for name, case in CASES.items() if case.via_cli])
def test_bad_input_through_the_cli(ctx, cli_results, name):
    results, ledger = cli_results
    done = results[name]
    case = CASES[name]
    assert done.returncode != 0, done.stdout[-2000:]
    assert done.returncode == 2, done.returncode  # nothing was sent, a refused key included
    assert "completed:" not in done.stdout
    assert ledger == []  # the CLI's sandbox never accepted (charged) anything
    reasons = [line for line in done.stderr.splitlines() if re.match(r"^(\S+ )*error: ", line)]
    assert reasons and re.search(case.cli_match or case.match, reasons[-1]), done.stderr[-1500:]
    reason = last_line(done.stderr)
    assert reason.startswith("error: "), f"the last stderr line is not the one-line reason: {reason!r}"
    assert "Traceback" not in done.stderr + done.stdout, done.stderr[-2000:]  # the run's log keeps the details
    if name not in NEEDS_SERVICES:  # answered before anything started: no temporary Prefect server, no database
        assert "temporary server" not in done.stderr + done.stdout
        home = cli_home(ctx, name)
        assert not any(home.rglob("*.db")), sorted(map(str, home.rglob("*")))


def test_an_error_found_later_is_still_one_line_without_a_traceback(ctx, tmp_path):
    """With no Prefect server configured, the CLI runs on a temporary one: an error found there (an
    unknown credentials block) still ends the output, as one line, with no traceback above it."""
    env = {k: v for k, v in subprocess_env(PREFECT_HOME=str(tmp_path / "home")).items() if k != "PREFECT_API_URL"}
    done = subprocess.run([*cli_command(), "run", str(ctx.clip), "--prompt", "ink", "--credentials", "no-such-block-v2v"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert done.returncode == 2, done.stderr[-2000:]
    assert last_line(done.stderr).startswith("error: No AimlApiCredentials block named 'no-such-block-v2v'")
    assert "Traceback" not in done.stderr + done.stdout
    assert "temporary server" in done.stderr  # this one did need Prefect
