"""The `aimlapi-video` console script: run one generation, start the sandbox, run the demo, and more.

Every failure ends with one line on stderr saying why (`error: ...`) and a non-zero exit, by one
rule (`cli_options.EXIT_CODES`, decided by `exit_codes.exit_code`): 2 for a failure before anything
was sent to the provider, 1 after a generation request was sent (or may have been), 130 for Ctrl-C,
143 for SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from collections.abc import Sequence
from typing import Any

from prefect_aimlapi_video.deployments.cli_options import (
    EXIT_CODES,
    collect_parser,
    first_hour_parsers,
    request_values,
    run_parser,
    run_settings,
)
from prefect_aimlapi_video.deployments.terminal import (
    OneLineErrors,
    exit_now,
    fail,
    flush_prefect,
    note_temporary_server,
    quiet_console,
)

KEY_ENV_VARS = ("AIMLAPI_API_KEY", "AIML_API_KEY")


def _key_from_env() -> str | None:
    return next((os.environ[name] for name in KEY_ENV_VARS if os.environ.get(name)), None)


def _credentials(args: argparse.Namespace) -> Any:
    """A block name, or an in-memory block built from the environment's key (never saved)."""
    from prefect_aimlapi_video.api.connection import DEFAULT_BASE_URL
    from prefect_aimlapi_video.blocks import AimlApiCredentials
    from prefect_aimlapi_video.flows.video_to_video import DEFAULT_CREDENTIALS_BLOCK

    if args.credentials:
        return args.credentials
    key = _key_from_env()
    if args.base_url and not key:
        raise SystemExit(fail("--base-url needs the API key in AIMLAPI_API_KEY (or AIML_API_KEY).", 2))
    if key:
        return AimlApiCredentials(api_key=key, base_url=args.base_url or DEFAULT_BASE_URL)
    return DEFAULT_CREDENTIALS_BLOCK


def _same_generation(args: argparse.Namespace) -> tuple[str | None, dict[str, Any]]:
    """The idempotency key and the settings of a `run`. By default the request itself is the scope:
    running the same command again resumes it (or returns its output) without a new charge. `--new`
    asks for a fresh generation."""
    settings = run_settings(args)
    if args.new:
        return f"cli-new:{uuid.uuid4()}", settings
    if args.idempotency_key:
        return args.idempotency_key, settings
    return None, {**settings, "idempotency_scope": "request"}


def _precheck(args: argparse.Namespace) -> None:
    """Everything checkable without Prefect, the network or S3, before anything starts: the request's
    fields, the settings, and the video itself (scheme, data URI, local file). `InvalidInputError`."""
    from prefect_aimlapi_video.flows.choices import build_request
    from prefect_aimlapi_video.flows.settings import check_run
    from prefect_aimlapi_video.media.video_checks import precheck

    _check_base_url(args.base_url)
    build_request(**request_values(args))
    settings = check_run(run_settings(args), output=args.output, idempotency_key=args.idempotency_key)
    info = precheck(args.video, staged=bool(args.stage_to))
    if info is not None:  # a local file or data URI: its limits are known offline too
        settings.limits.check(info, info.size_bytes, args.video.strip()[:200])


def _check_base_url(base_url: str | None) -> None:
    """`--base-url` as the block would take it: https, or plain http on loopback (`InvalidInputError`)."""
    from prefect_aimlapi_video.api.connection import check_base_url
    from prefect_aimlapi_video.api.errors import InvalidInputError

    if base_url is not None:
        try:
            check_base_url(base_url)
        except ValueError as exc:
            raise InvalidInputError(f"--base-url: {exc}") from None


def cmd_run(args: argparse.Namespace) -> int:
    from prefect_aimlapi_video.api.errors import InvalidInputError

    try:
        _precheck(args)  # before Prefect (and a temporary server) starts: bad input is answered at once
    except InvalidInputError as exc:
        return fail(str(exc), 2)
    from prefect_aimlapi_video.flows.video_to_video import video_to_video

    quiet_console()
    key, settings = _same_generation(args)
    return _report(
        video_to_video(video=args.video, **request_values(args), credentials=_credentials(args), output=args.output,
                       idempotency_key=key, settings=settings),
        interrupted="interrupted; run the same command again to resume without a new charge.",
    )


def _report(flow_run: Any, *, interrupted: str) -> int:
    """Run one flow to its end and say how it went: its one-line result on stdout (exit 0), or one
    `error:` line on stderr (2 if nothing was sent to the provider, 1 after; 130 for Ctrl-C and 143
    for SIGTERM, within seconds: `stopping`)."""
    from prefect_aimlapi_video.api.errors import AimlApiError
    from prefect_aimlapi_video.deployments.exit_codes import INTERRUPTED, exit_code, stopped_code
    from prefect_aimlapi_video.deployments.stopping import Stopped, run_until_stopped

    note_temporary_server()
    try:
        result = run_until_stopped(flow_run)
    except AimlApiError as exc:
        return fail(str(exc), exit_code(exc))
    except KeyboardInterrupt:  # raised inside the flow, not by a signal to this process
        return fail(interrupted, INTERRUPTED)
    except Stopped as stop:
        exit_now(interrupted, stopped_code(stop.signum))
    flush_prefect()
    print(result.one_line(), flush=True)
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    from prefect_aimlapi_video.api.errors import InvalidInputError
    from prefect_aimlapi_video.flows.settings import check_run

    try:
        if not args.generation_id.strip():
            raise InvalidInputError("the generation id is empty.")
        _check_base_url(args.base_url)
        check_run(run_settings(args), output=args.output)
    except InvalidInputError as exc:
        return fail(str(exc), 2)
    from prefect_aimlapi_video.flows.collect import collect_generation

    quiet_console()
    return _report(
        collect_generation(generation_id=args.generation_id, credentials=_credentials(args), output=args.output,
                           settings=run_settings(args)),
        interrupted="interrupted; run the same command again to collect it.",
    )


def cmd_save_key(args: argparse.Namespace) -> int:
    from prefect_aimlapi_video.api.errors import InvalidInputError

    try:
        _check_base_url(args.base_url)
    except InvalidInputError as exc:
        return fail(str(exc), 2)
    from prefect_aimlapi_video.blocks import AimlApiCredentials

    key = _key_from_env()
    if not key:
        import getpass

        key = getpass.getpass("AI/ML API key: ")
    if not key:
        return fail("no key given (set AIMLAPI_API_KEY or type it at the prompt).", 2)
    block = AimlApiCredentials(api_key=key, **({"base_url": args.base_url} if args.base_url else {}))
    note_temporary_server()
    block.save(args.name, overwrite=True)
    print(f"Saved AimlApiCredentials block {args.name!r} ({block.base_url}).")
    return 0


def _without_sandbox(exc: ImportError) -> int:
    """Without the `sandbox` extra, importing the sandbox says how to install it, in one line: print it
    as the command's one error line (nothing was sent anywhere: exit 2). Any other ImportError is a bug."""
    if "prefect-aimlapi-video[sandbox]" not in str(exc):
        raise exc
    return fail(str(exc), 2)


def main(argv: Sequence[str] | None = None) -> int:
    from prefect.settings import temporary_settings

    argv = list(sys.argv[1:] if argv is None else argv)
    # A temporary Prefect server (no PREFECT_API_URL) would otherwise try to phone home, and log an
    # error on machines without internet; the server's own process reads this. An explicit setting wins.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # A first temporary server migrates a fresh database (tens of seconds on a small, busy machine):
    # more than the 20 s Prefect waits for it by default. This process read its settings when the
    # package was imported (the block imports Prefect), so the environment alone comes too late here.
    wait = os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS") or "120"
    with temporary_settings(updates={"server.ephemeral.startup_timeout_seconds": int(float(wait))}):
        return _dispatch(argv)


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] == "sandbox":
        try:
            from prefect_aimlapi_video.sandbox import main as sandbox_main
        except ImportError as exc:
            return _without_sandbox(exc)
        return sandbox_main(argv[1:])
    if argv and argv[0] == "s3-events":
        from prefect_aimlapi_video.deployments.bridge import main as bridge_main

        return bridge_main(argv[1:])
    if argv and argv[0] == "serve":
        from prefect_aimlapi_video.deployments.serve import main as serve_main

        return serve_main(argv[1:])
    parser = OneLineErrors(prog="aimlapi-video", description=__doc__.splitlines()[0], epilog=EXIT_CODES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineErrors)
    run_parser(sub)
    sub.add_parser("sandbox", help="Serve the local stand-in of the AI/ML API (see --help).")
    sub.add_parser("s3-events", help="Bridge S3 notifications on an SQS queue to Prefect events (see --help).")
    sub.add_parser("serve", help="Serve the bundled deployments (or --prefect-file) from this process (see --help).")
    sub.add_parser("demo", help="Run one generation against a throwaway sandbox, no key needed.")
    first_hour_parsers(sub)
    collect_parser(sub)
    save = sub.add_parser("save-key", help="Save the key from AIMLAPI_API_KEY (or a prompt) as a block.")
    save.add_argument("--name", default="aimlapi")
    save.add_argument("--base-url", default=None)
    args = parser.parse_args(argv)
    if args.command == "run":
        return cmd_run(args)
    if args.command == "save-key":
        return cmd_save_key(args)
    if args.command == "collect":
        return cmd_collect(args)
    if args.command == "init":
        from prefect_aimlapi_video.deployments.init import run_init

        return run_init(force=args.force)
    if args.command == "sample-clip":
        try:
            from prefect_aimlapi_video.deployments.sample_clip import run_sample_clip
        except ImportError as exc:  # the clip maker is the sandbox's
            return _without_sandbox(exc)
        return run_sample_clip(args.path, args.seconds, args.force)
    if args.command == "demo":
        from prefect_aimlapi_video.deployments.demo import run_demo

        return run_demo()
    return fail(f"unknown command {args.command}", 2)


if __name__ == "__main__":
    raise SystemExit(main())
