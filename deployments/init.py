"""`aimlapi-video init`: the bundled deployments, written into the user's own Prefect project.

The deployments this package ships (`prefect.yaml`, installed beside this module) name their flows
by module path (`prefect_aimlapi_video.flows...:...`) and have no pull steps (`pull: []`), so a copy
of the file deploys the installed package from any folder: a worker needs the package, not a source
tree. `init` writes that copy as ./prefect.yaml, under a header that says how to deploy it from
there, and prints the same commands.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from prefect_aimlapi_video.deployments.terminal import fail

PACKAGE = "prefect_aimlapi_video.deployments"
FILE_NAME = "prefect.yaml"

HEADER = """\
# Deployments of the AI/ML API video-to-video flows (prefect-aimlapi-video), written by
# `aimlapi-video init`. Deploy them from this folder:
#
#   aimlapi-video save-key                          # the key, as the AimlApiCredentials block "aimlapi"
#   export AIMLAPI_BUCKET=my-media-bucket           # `prefect deploy` fills in {{ $AIMLAPI_BUCKET }} from it
#   prefect work-pool create aimlapi --type process
#   prefect deploy --all
#   prefect worker start --pool aimlapi             # runs the flow runs; needs prefect-aimlapi-video installed
#   aimlapi-video s3-events --queue-url <SQS queue URL> --prefix incoming/ --exclude-prefix outputs/
#
# Or serve them from one process, without a work pool or worker:
#   aimlapi-video serve --prefect-file prefect.yaml
#
# Inputs arrive under s3://$AIMLAPI_BUCKET/incoming/ (the s3-events bridge turns S3 notifications into
# Prefect events) and results go under outputs/ of the same bucket; the trigger only matches incoming/,
# so an output can never start a generation. Per-object prompt/strength/seed come from the object's
# metadata (x-amz-meta-aimlapi-prompt, -strength, -seed, -enable-prompt-expansion).

"""

NEXT_STEPS = """\
Next, in this folder:
  aimlapi-video save-key                           # the key the flows use: the block "aimlapi"
  export AIMLAPI_BUCKET=<your bucket>              # prefect deploy fills it in (unset, it stays a placeholder)
  prefect work-pool create aimlapi --type process  # the work pool the deployments name (once)
  prefect deploy --all                             # reads ./prefect.yaml
  prefect worker start --pool aimlapi              # runs their flow runs
  aimlapi-video s3-events --queue-url <SQS queue URL> --prefix incoming/ --exclude-prefix outputs/
Or, without a work pool: aimlapi-video serve --prefect-file prefect.yaml"""

_TOP_LEVEL_PULL = re.compile(r"^pull:.*$", re.MULTILINE)


def bundled_text() -> str:
    """The deployments as installed with this package."""
    return resources.files(PACKAGE).joinpath(FILE_NAME).read_text(encoding="utf-8")


def bundled_path() -> str:
    """Where the installed file is (for `serve --help` and messages)."""
    return str(resources.files(PACKAGE).joinpath(FILE_NAME))


def project_text(source: str) -> str:
    """The file `init` writes: our header instead of the source's leading comments (which speak of the
    package's own folder), the rest as it is, and `pull: []` when it has no pull steps (`pull: null`,
    or none, makes Prefect add a step that changes into the folder `prefect deploy` ran in)."""
    lines = source.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#")),
                 len(lines))
    body = "".join(lines[start:])
    config: dict[str, Any] = yaml.safe_load(body) or {}
    if config.get("pull") is None:
        if _TOP_LEVEL_PULL.search(body):
            body = _TOP_LEVEL_PULL.sub("pull: []", body, count=1)
        else:
            body = body.rstrip("\n") + "\n\npull: []\n"
    return HEADER + body


def deployment_names(text: str) -> list[str]:
    return [entry["name"] for entry in (yaml.safe_load(text) or {}).get("deployments") or []]


def write_project_file(folder: Path, force: bool = False) -> Path:
    """Write ./prefect.yaml in `folder`; `FileExistsError` if one is there and not `force`."""
    target = folder / FILE_NAME
    text = project_text(bundled_text())
    with open(target, "w" if force else "x", encoding="utf-8") as out:  # "x": never replaces a file
        out.write(text)
    return target


def run_init(folder: Path | None = None, force: bool = False) -> int:
    folder = (folder or Path.cwd()).absolute()
    try:
        target = write_project_file(folder, force)
    except FileExistsError:
        return fail(f"{folder / FILE_NAME} already exists; add --force to replace it (or copy the deployments "
                    f"you want from {bundled_path()}).", 2)
    except OSError as exc:
        return fail(f"cannot write {folder / FILE_NAME} ({exc.strerror or exc}).", 2)
    names = ", ".join(deployment_names(target.read_text(encoding="utf-8")))
    print(f"Wrote {target} (deployments: {names}).")
    print(NEXT_STEPS)
    return 0
