"""The `aimlapi-video` console script: run one generation, start the sandbox, run the demo, and more.

Every failure ends with one line on stderr saying why (`error: ...`) and a non-zero exit:
2 for input we refused before anything was sent, 1 for everything else.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from collections.abc import Sequence
from typing import Any

from prefect_aimlapi_video.deployments.terminal import OneLineErrors, fail, flush_prefect, quiet_console

KEY_ENV_VARS = ("AIMLAPI_API_KEY", "AIML_API_KEY")


def _key_from_env() -> str | None:
    return next((os.environ[name] for name in KEY_ENV_VARS if os.environ.get(name)), None)


def _run_parser(sub: Any) -> None:
    run = sub.add_parser("run", help="Restyle one video (a flow run on your Prefect server).")
    run.add_argument("video", help="https URL, data URI, local file or s3://bucket/key")
    _request_options(run)
    run.add_argument("--output", default=None, help="local path/directory or s3://bucket/key (templates allowed)")
    run.add_argument("--output-storage", default=None, help="writable filesystem block, slug/name")
    who = run.add_mutually_exclusive_group()
    who.add_argument("--credentials", default=None, help="AimlApiCredentials block name")
    who.add_argument("--base-url", default=None, help="API base URL; the key comes from AIMLAPI_API_KEY")
    run.add_argument("--aws-credentials", default=None, help="AwsCredentials block name for s3:// paths")
    run.add_argument("--stage-to", default=None, help="S3Bucket block (s3-bucket/name) for big local files")
    again = run.add_mutually_exclusive_group()
    again.add_argument("--idempotency-key", default=None,
                       help="generations with the same key (and request) are paid once; default: the request itself")
    again.add_argument("--new", action="store_true",
                       help="a fresh, paid generation even if this exact request ran before")
    run.add_argument("--submissions", default=None,
                     help="exactly-once records: a directory or s3://bucket/prefix (default AIMLAPI_SUBMISSIONS_DIR)")
    run.add_argument("--timeout", type=float, default=None, help="seconds to wait for the generation")
    _limit_options(run)


# `--max-duration` -> InputLimits.max_duration_seconds, and so on: each limit checked before paying.
LIMIT_FLAGS = {"--max-duration": "max_duration_seconds", "--max-long-side": "max_long_side",
               "--max-short-side": "max_short_side", "--max-input-bytes": "max_input_bytes",
               "--max-generation-usd": "max_generation_usd"}


def _limit_options(run: argparse.ArgumentParser) -> None:
    from prefect_aimlapi_video.media.limits import InputLimits

    group = run.add_argument_group("limits, checked before anything is paid (the provider publishes none)")
    for flag, name in LIMIT_FLAGS.items():
        field = InputLimits.model_fields[name]
        group.add_argument(flag, dest=name, type=field.annotation, default=None,
                           help=f"{field.description} Default {field.default:g}.")


def _limits(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name) for name in LIMIT_FLAGS.values() if getattr(args, name) is not None}


def _flag(name: str, default: Any) -> str:
    """`--strength` for `strength`; `--no-prompt-expansion` for `enable_prompt_expansion` (default on)."""
    if default is True:
        return "--no-" + name.removeprefix("enable_").replace("_", "-")
    return "--" + name.replace("_", "-")


def _request_options(run: argparse.ArgumentParser) -> None:
    """One option per field of the registered request models (`api.requests`), typed from the
    field; an option not given leaves the model's default."""
    from prefect_aimlapi_video.api.requests import DEFAULT_MODEL, REQUEST_MODELS

    run.add_argument("--model", default=DEFAULT_MODEL, choices=sorted(REQUEST_MODELS), help="the provider's model")
    seen: set[str] = set()
    for request in REQUEST_MODELS.values():
        for name, field in request.model_fields.items():
            if name in seen:
                continue
            seen.add(name)
            flag = _flag(name, field.default)
            help_text = f"turn off: {field.description}" if field.default is True else field.description
            if field.default is True or field.default is False:
                run.add_argument(flag, dest=name, action="store_const", const=not field.default, default=None,
                                 help=help_text)
                continue
            kind = next((k for k in (int, float) if k in (getattr(field.annotation, "__args__", ()) or
                                                           (field.annotation,))), str)
            run.add_argument(flag, dest=name, type=kind, default=None, required=field.is_required() and
                             request.MODEL == DEFAULT_MODEL, help=help_text)


def _request_values(args: argparse.Namespace) -> dict[str, Any]:
    """The request fields given on the command line: the default model's as the flow's own
    parameters, any other model's fields as `overrides`."""
    from prefect_aimlapi_video.api.requests import (
        DEFAULTS,
        GenerationParams,
        request_fields,
    )

    given = {name: getattr(args, name) for name in request_fields() if getattr(args, name, None) is not None}
    own = {name: value for name, value in given.items() if name in GenerationParams.model_fields}
    others = {name: value for name, value in given.items() if name not in own}
    return {**{name: DEFAULTS.get(name) for name in DEFAULTS}, **own, "model": args.model,
            **({"overrides": others} if others else {})}


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


def _same_generation(args: argparse.Namespace) -> dict[str, Any]:
    """By default the request itself is the scope: running the same command again resumes it (or
    returns its output) without a new charge. `--new` asks for a fresh generation."""
    if args.new:
        return {"idempotency_key": f"cli-new:{uuid.uuid4()}"}
    if args.idempotency_key:
        return {"idempotency_key": args.idempotency_key}
    return {"idempotency_scope": "request"}


def _precheck(args: argparse.Namespace) -> None:
    """Everything checkable without Prefect, the network or S3, before anything starts: the request's
    fields, the settings, and the video itself (scheme, data URI, local file). `InvalidInputError`."""
    from prefect_aimlapi_video.api.requests import request_model
    from prefect_aimlapi_video.flows.settings import validate_settings
    from prefect_aimlapi_video.media.video_checks import precheck

    _check_base_url(args.base_url)
    values = _request_values(args)
    request = request_model(values.pop("model"))
    overrides = values.pop("overrides", {})
    request.validated(**{**{k: v for k, v in values.items() if k in request.model_fields}, **overrides})
    settings = validate_settings(submissions=args.submissions, output=args.output, output_storage=args.output_storage,
                                 stage_to=args.stage_to, limits=_limits(args), idempotency_key=args.idempotency_key,
                                 **({} if args.timeout is None else {"timeout_seconds": args.timeout}))
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
    options: dict[str, Any] = _same_generation(args)
    if args.timeout is not None:
        options["timeout_seconds"] = args.timeout
    return _report(
        video_to_video(
            video=args.video, **_request_values(args), credentials=_credentials(args),
            output=args.output, output_storage=args.output_storage, aws_credentials=args.aws_credentials,
            stage_to=args.stage_to, submissions=args.submissions, limits=_limits(args) or None, **options,
        ),
        interrupted="interrupted; run the same command again to resume without a new charge.",
    )


def _report(flow_run: Any, *, interrupted: str) -> int:
    """Run one flow to its end and say how it went: its one-line result on stdout (exit 0), or one
    `error:` line on stderr (2 for refused input, 1 for the rest, 130 for Ctrl-C)."""
    from prefect_aimlapi_video.api.errors import AimlApiError, InvalidInputError

    try:
        result = asyncio.run(flow_run)
    except InvalidInputError as exc:
        return fail(str(exc), 2)
    except AimlApiError as exc:
        return fail(str(exc), 1)
    except KeyboardInterrupt:
        return fail(interrupted, 130)
    flush_prefect()
    print(result.one_line(), flush=True)
    return 0


def _collect_parser(sub: Any) -> None:
    collect = sub.add_parser("collect", help="Download a generation already paid for, by id (no new charge).")
    collect.add_argument("generation_id", help="the id a run's summary or log names")
    collect.add_argument("--output", default=None, help="local path/directory or s3://bucket/key (templates allowed)")
    collect.add_argument("--output-storage", default=None, help="writable filesystem block, slug/name")
    who = collect.add_mutually_exclusive_group()
    who.add_argument("--credentials", default=None, help="AimlApiCredentials block name")
    who.add_argument("--base-url", default=None, help="API base URL; the key comes from AIMLAPI_API_KEY")
    collect.add_argument("--aws-credentials", default=None, help="AwsCredentials block name for s3:// paths")
    collect.add_argument("--timeout", type=float, default=None, help="seconds to wait if it is still running")
    collect.add_argument("--submissions", default=None,
                         help="the record store its run used (default AIMLAPI_SUBMISSIONS_DIR): a charge is reported once")


def cmd_collect(args: argparse.Namespace) -> int:
    from prefect_aimlapi_video.api.errors import InvalidInputError
    from prefect_aimlapi_video.flows.settings import validate_settings

    try:
        if not args.generation_id.strip():
            raise InvalidInputError("the generation id is empty.")
        _check_base_url(args.base_url)
        validate_settings(output=args.output, output_storage=args.output_storage, submissions=args.submissions,
                          **({} if args.timeout is None else {"timeout_seconds": args.timeout}))
    except InvalidInputError as exc:
        return fail(str(exc), 2)
    from prefect_aimlapi_video.flows.collect import collect_generation

    quiet_console()
    return _report(
        collect_generation(
            generation_id=args.generation_id, credentials=_credentials(args), output=args.output,
            output_storage=args.output_storage, aws_credentials=args.aws_credentials, submissions=args.submissions,
            **({} if args.timeout is None else {"timeout_seconds": args.timeout}),
        ),
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
    block.save(args.name, overwrite=True)
    print(f"Saved AimlApiCredentials block {args.name!r} ({block.base_url}).")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # A temporary Prefect server (no PREFECT_API_URL) would otherwise try to phone home, and log an
    # error on machines without internet. An explicit setting wins.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # A first temporary server migrates a fresh database (~25 s on a small machine): more than the
    # 20 s Prefect waits for it by default.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    if argv and argv[0] == "sandbox":
        from prefect_aimlapi_video.sandbox import main as sandbox_main

        return sandbox_main(argv[1:])
    if argv and argv[0] == "s3-events":
        from prefect_aimlapi_video.deployments.bridge import main as bridge_main

        return bridge_main(argv[1:])
    if argv and argv[0] == "serve":
        from prefect_aimlapi_video.deployments.serve import main as serve_main

        return serve_main(argv[1:])
    parser = OneLineErrors(prog="aimlapi-video", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineErrors)
    _run_parser(sub)
    sub.add_parser("sandbox", help="Serve the local stand-in of the AI/ML API (see --help).")
    sub.add_parser("s3-events", help="Bridge S3 notifications on an SQS queue to Prefect events (see --help).")
    sub.add_parser("serve", help="Serve the deployments of deployments/prefect.yaml from this process.")
    sub.add_parser("demo", help="Run one generation against a throwaway sandbox, no key needed.")
    _collect_parser(sub)
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
    if args.command == "demo":
        from prefect_aimlapi_video.deployments.demo import run_demo

        return run_demo()
    return fail(f"unknown command {args.command}", 2)


if __name__ == "__main__":
    raise SystemExit(main())
