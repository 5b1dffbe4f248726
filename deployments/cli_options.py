"""The `aimlapi-video` command line's options: one per request field of every registered model,
one per input limit, and the run's settings (`flows.settings.RunSettings`) they make.

Kept apart from the commands (`deployments.cli`) so the flags and what each becomes are read in one
place: a flag not given leaves the flow's default.
"""

from __future__ import annotations

import argparse
from typing import Any

# The one exit-code rule of the commands that run flows, printed by `--help` (`deployments.exit_codes`
# decides it: 2 only when nothing was sent, for certain).
EXIT_CODES = """\
exit codes:
  0    done
  2    refused before anything was sent to the provider, so nothing was charged: bad input or
       settings, a missing block, the key refused by the free access check, the spend cap, an
       output that cannot be written. Fix it and run the same command again.
  1    failed after a generation request was sent (or may have been): the error line names the
       generation id and the `aimlapi-video collect` command that fetches it at no new charge,
       when there is one. Running the same command again never pays twice.
  130  interrupted (Ctrl-C), 143 stopped (SIGTERM: timeout, docker stop, Kubernetes), within
       seconds: run the same command again to resume without a new charge.
"""

COLLECT_EXIT_CODES = """\
exit codes:
  0    collected
  2    refused before the provider was asked anything: a bad id or output, a missing block, the
       key refused by the free access check
  1    failed while collecting (no such generation, it failed, still running when the wait ended,
       the download or storing it failed): run the same command again, it never pays
  130  interrupted (Ctrl-C), 143 stopped (SIGTERM)
"""


def run_parser(sub: Any) -> None:
    run = sub.add_parser("run", help="Restyle one video (a flow run on your Prefect server).", epilog=EXIT_CODES,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("video", help="https URL, data URI, local file or s3://bucket/key")
    _request_options(run)
    _where_options(run)
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


def _where_options(parser: argparse.ArgumentParser) -> None:
    """Where the output goes and which key and AWS access are used: the same for `run` and `collect`."""
    parser.add_argument("--output", default=None, help="local path/directory or s3://bucket/key (templates allowed)")
    parser.add_argument("--output-storage", default=None, help="writable filesystem block, slug/name")
    who = parser.add_mutually_exclusive_group()
    who.add_argument("--credentials", default=None, help="AimlApiCredentials block name")
    who.add_argument("--base-url", default=None, help="API base URL; the key comes from AIMLAPI_API_KEY")
    parser.add_argument("--aws-credentials", default=None, help="AwsCredentials block name for s3:// paths")


def run_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The flow's `settings` (`RunSettings` fields) the flags give; a flag not given is left out."""
    values = {"output_storage": args.output_storage, "aws_credentials": args.aws_credentials,
              "stage_to": getattr(args, "stage_to", None), "submissions": args.submissions,
              "timeout_seconds": args.timeout, "limits": _limits(args) if hasattr(args, "max_duration_seconds") else None}
    return {name: value for name, value in values.items() if value not in (None, {})}


# `--max-duration` -> InputLimits.max_duration_seconds, and so on: each limit checked before paying.
LIMIT_FLAGS = {"--max-duration": "max_duration_seconds", "--max-long-side": "max_long_side",
               "--max-short-side": "max_short_side", "--max-input-bytes": "max_input_bytes",
               "--max-generation-usd": "max_generation_usd"}


def _limit_options(run: argparse.ArgumentParser) -> None:
    from prefect_aimlapi_video.media.limits import InputLimits

    group = run.add_argument_group("limits, checked before anything is paid (the provider publishes none)")
    for flag, name in LIMIT_FLAGS.items():
        field = InputLimits.model_fields[name]
        default = f"{field.default:g}" if isinstance(field.default, float) else f"{field.default}"
        group.add_argument(flag, dest=name, type=field.annotation, default=None,
                           help=f"{field.description} Default {default}.")


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


def request_values(args: argparse.Namespace) -> dict[str, Any]:
    """The request fields given on the command line: the default model's as the flow's own
    parameters, any other model's fields as `overrides`; a field not given takes its model's default."""
    from prefect_aimlapi_video.api.requests import request_fields
    from prefect_aimlapi_video.flows.choices import NAMED_FIELDS

    given = {name: getattr(args, name) for name in request_fields() if getattr(args, name, None) is not None}
    own = {name: value for name, value in given.items() if name in NAMED_FIELDS}
    others = {name: value for name, value in given.items() if name not in own}
    return {**own, "model": args.model, **({"overrides": others} if others else {})}


def collect_parser(sub: Any) -> None:
    collect = sub.add_parser("collect", help="Download a generation already paid for, by id (no new charge).",
                             epilog=COLLECT_EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    collect.add_argument("generation_id", help="the id a run's summary or log names")
    _where_options(collect)
    collect.add_argument("--timeout", type=float, default=None, help="seconds to wait if it is still running")
    collect.add_argument("--submissions", default=None,
                         help="the record store its run used (default AIMLAPI_SUBMISSIONS_DIR): a charge is reported once")


def first_hour_parsers(sub: Any) -> None:
    """`init` (the bundled deployments into ./prefect.yaml) and `sample-clip` (a video to try things on)."""
    init = sub.add_parser("init", help="Write the bundled deployments into ./prefect.yaml (your Prefect project).",
                          description="Write the deployments this package ships into prefect.yaml in the current "
                                      "folder, then print the commands that deploy them.")
    init.add_argument("--force", action="store_true", help="replace an existing prefect.yaml")
    clip = sub.add_parser("sample-clip", help="Write a small sample video to try the other commands on.",
                          description="Write a small H.264 MP4 (480x272, moving colours) made locally, no network.")
    clip.add_argument("path", nargs="?", default="sample.mp4", help="where to write it (default: sample.mp4)")
    clip.add_argument("--seconds", type=float, default=2.0, help="its length, 0.1 to 30 (default 2)")
    clip.add_argument("--force", action="store_true", help="replace an existing file")
