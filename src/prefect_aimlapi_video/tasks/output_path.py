"""Where `download_video` stores a result: its destination's template rendered, or a finished path.

An output template (`out/{stem}-{generation}.mp4`) belongs in the task's `target`; its `path`, when
given, is a finished location and is used exactly as given. The two are never mixed silently:

* a `{...}` in `path` is refused (it would otherwise be stored under a literal `{stem}`);
* a `target` written as a template together with a `path` is refused (the template would go unused);
* without `path`, the template is rendered: `{generation}`, `{flow_run}` and `{date}` are known here,
  the request's fields (`{stem}`, `{seed}`, `{strength}`, `{fingerprint}`) come from `fields`, and
  a field left without a value is refused by name.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from typing import Any

from prefect_aimlapi_video.api.errors import InvalidInputError
from prefect_aimlapi_video.media.video_checks import file_stem
from prefect_aimlapi_video.storage.destinations import Destination
from prefect_aimlapi_video.storage.templates import TEMPLATE_FIELDS, template_fields

KNOWN_HERE = ("generation", "flow_run", "date")  # what the download task can fill in by itself
_BRACED = re.compile(r"\{[^{}]*\}")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def check_path_choice(target: Any, path: str | None) -> None:
    """Refuse the two mix-ups of a template and a path (see the module's docstring)."""
    if path is None:
        return
    if braced := _BRACED.search(path):
        raise InvalidInputError(
            f"download_video: path {path!r} is used as given, never rendered, so its {braced.group()} "
            "would stay in the name. Put the template in target (e.g. target='out/{stem}-{generation}.mp4', "
            "with fields={'stem': ...}) and leave path out, or pass a finished path.")
    if isinstance(target, str) and _BRACED.search(target):
        raise InvalidInputError(
            f"download_video: target {target!r} is an output template and path {path!r} a finished path; the "
            "template would go unused. Leave path out to render the template, or give target without fields.")


def field_text(name: str, value: Any) -> str:
    """A value of `fields` as a single, path-safe segment, the way the flows make their own.

    `stem` may be the input as the user gave it (a path or URL): its last segment without the suffix,
    as the flows derive `{stem}`. A seed of None is "random", as in the flows.
    """
    if name == "stem":
        return file_stem(str(value))
    if name == "seed" and value is None:
        return "random"
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return _UNSAFE.sub("-", text).strip("-.")[:60]


def render_output_path(
    destination: Destination, generation_id: str, flow_run_id: str | None, fields: Mapping[str, Any] | None = None
) -> str:
    """`destination`'s template rendered for this generation, with `fields` for the request's own fields."""
    given = dict(fields or {})
    unknown = sorted(set(given) - set(TEMPLATE_FIELDS))
    if unknown:
        raise InvalidInputError(f"download_video: fields {unknown} are not template fields; available: "
                                + ", ".join("{" + f + "}" for f in TEMPLATE_FIELDS))
    known = template_fields(stem="", seed=None, strength=0.0, fingerprint="", generation_id=generation_id,
                            flow_run_id=flow_run_id)
    values = {name: known[name] for name in KNOWN_HERE}
    values.update({name: field_text(name, value) for name, value in given.items()})  # a given value wins
    wanted = {name for _, name, _, _ in string.Formatter().parse(destination.template) if name}
    missing = sorted(name for name in wanted if not values.get(name))
    if missing:
        example = ", ".join(f"{name!r}: ..." for name in missing)
        raise InvalidInputError(
            f"download_video: output template {destination.template!r} needs "
            + ", ".join("{" + name + "}" for name in missing)
            + f", which the task cannot know: pass fields={{{example}}} (e.g. {{'stem': video}}).")
    return destination.render(values)
