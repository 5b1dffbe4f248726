"""Serve the bundled deployments (the prefect.yaml installed with this package) from this process.

For development and demos: the same deployments, triggers and schedules as `prefect deploy`
creates, without a work pool or worker (`prefect.serve`). The YAML is the one source; this reads it
(the installed one, or `--prefect-file`, e.g. the copy `aimlapi-video init` wrote into a project),
fills in its `{{ $ENV_VAR }}` placeholders from the environment, and serves each entry.

    AIMLAPI_BUCKET=my-bucket aimlapi-video serve
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from prefect_aimlapi_video.deployments.terminal import OneLineErrors, fail

PREFECT_YAML = Path(__file__).with_name("prefect.yaml")
_ENV_PLACEHOLDER = re.compile(r"\{\{\s*\$(\w+)\s*\}\}")


def _fill_env(value: Any) -> Any:
    """Replace `{{ $NAME }}` with the environment's value; leave other templates (triggers') alone."""
    if isinstance(value, str):
        def lookup(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in os.environ:
                raise SystemExit(f"error: {PREFECT_YAML.name} needs the environment variable {name}")
            return os.environ[name]

        return _ENV_PLACEHOLDER.sub(lookup, value)
    if isinstance(value, list):
        return [_fill_env(v) for v in value]
    if isinstance(value, dict):
        return {k: _fill_env(v) for k, v in value.items()}
    return value


def load_deployments(path: Path = PREFECT_YAML, names: list[str] | None = None) -> list[Any]:
    """`RunnerDeployment`s for the entries of a prefect.yaml (all, or those named)."""
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger
    from prefect.flows import load_flow_from_entrypoint

    config = _fill_env(yaml.safe_load(path.read_text()))
    deployments = []
    for entry in config["deployments"]:
        if names and entry["name"] not in names:
            continue
        flow = load_flow_from_entrypoint(entry["entrypoint"])
        deployments.append(
            flow.to_deployment(
                name=entry["name"],
                description=entry.get("description"),
                tags=entry.get("tags"),
                parameters=entry.get("parameters", {}),
                triggers=[DeploymentEventTrigger(**t) for t in entry.get("triggers", [])],
                schedules=[CronSchedule(**s) for s in entry.get("schedules", [])],
            )
        )
    return deployments


def main(argv: list[str] | None = None) -> int:
    parser = OneLineErrors(
        prog="aimlapi-video serve", description="Serve the deployments of a prefect.yaml from this process "
        "(prefect.serve): the same deployments, triggers and schedules as `prefect deploy` creates, without a "
        "work pool or worker. The bundled file needs AIMLAPI_BUCKET set.")
    where = str(PREFECT_YAML).replace("%", "%%")
    parser.add_argument("--prefect-file", type=Path, default=PREFECT_YAML,
                        help=f"the file to serve; default: the one installed with this package, {where} "
                             "(`aimlapi-video init` copies it into your project)")
    parser.add_argument("--only", action="append", help="serve only this deployment (repeatable)")
    parser.add_argument("--limit", type=int, default=None, help="max concurrent flow runs")
    args = parser.parse_args(argv)
    try:
        deployments = load_deployments(args.prefect_file, args.only)
    except SystemExit as exc:  # a placeholder's environment variable is not set: named, nothing started
        if not isinstance(exc.code, str):
            raise
        return fail(exc.code.removeprefix("error: "), 2)
    except OSError as exc:
        return fail(f"--prefect-file {args.prefect_file}: {exc.strerror or exc}.", 2)
    missing = sorted(set(args.only or ()) - {d.name for d in deployments})
    if missing:
        return fail(f"no deployment named {', '.join(missing)} in {args.prefect_file}.", 2)
    from prefect import serve

    serve(*deployments, limit=args.limit)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
