"""Output templates: the `{field}` names a user may write in `output`, and their values.

Declared once here: the flows check a template before anything is paid (`check_template`), the
destinations render it (`template_fields`) and try its widest rendering (`WIDEST_FIELDS`).
"""

from __future__ import annotations

import datetime as dt
import re
import string

from prefect_aimlapi_video.api.errors import InvalidInputError

TEMPLATE_FIELDS = ("stem", "seed", "strength", "generation", "fingerprint", "flow_run", "date")


def check_template(template: str) -> str:
    """An output template may use only plain `{field}` names from `TEMPLATE_FIELDS`: no attribute or
    index access (`{stem.__class__}`), no format spec (`{stem:>300}`), no conversion (`{stem!r}`); a typo
    or a trick is refused before anything is paid."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise InvalidInputError(f"output template {template!r} is malformed ({exc}).") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in TEMPLATE_FIELDS:
            plain = name.split(".")[0].split("[")[0]
            what = f"unknown field {name!r}" if plain not in TEMPLATE_FIELDS or plain == name else \
                f"{{{name}}}: only plain {{field}} names are allowed"
            raise InvalidInputError(f"output template {template!r} uses {what}; available: "
                                    + ", ".join("{" + f + "}" for f in TEMPLATE_FIELDS))
        if spec or conversion:
            raise InvalidInputError(f"output template {template!r}: {{{name}}} takes no format spec or conversion; "
                                    f"write {{{name}}}.")
    return template


def template_fields(
    *, stem: str, seed: int | None, strength: float, fingerprint: str, generation_id: str, flow_run_id: str | None
) -> dict[str, str]:
    """Values for `{...}` in output templates; each is safe as a single path segment."""
    short_generation = re.sub(r"[^A-Za-z0-9-]+", "-", generation_id.split(":", 1)[0])[:36] or "generation"
    return {
        "stem": stem,
        "seed": "random" if seed is None else str(seed),
        "strength": f"{strength:g}",
        "generation": short_generation,
        "fingerprint": fingerprint[:12],
        "flow_run": (flow_run_id or "local")[:8],
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d"),
    }


# The longest value each template field can take (`template_fields`): the widest name it can render.
WIDEST_FIELDS = {"stem": "x" * 60, "seed": "4294967295", "strength": "0.123456", "generation": "x" * 36,
                 "fingerprint": "x" * 12, "flow_run": "x" * 8, "date": "20261203"}
