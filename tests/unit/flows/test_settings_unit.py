"""prefect_aimlapi_video.flows.settings: every setting coerced or refused before anything is paid."""

from __future__ import annotations

from typing import Any

import pytest

from prefect_aimlapi_video.api.errors import InvalidInputError
from prefect_aimlapi_video.flows.settings import RunSettings, check_run

OWN = ("output", "idempotency_key")  # the flow's own parameters, checked with its settings


def checked(**values: Any):
    """`check_run` of flat values: the flow's own parameters given as such, the rest as `settings`."""
    own = {name: values.pop(name) for name in OWN if name in values}
    return check_run(values, **own)


def test_defaults_and_coercions():
    default = check_run()
    assert default.poll_policy is None and default.idempotency_scope == "flow-run"  # None: learned
    assert default.timeout_seconds == 1200 and default.reconcile_grace_seconds == 1200
    coerced = check_run({"timeout_seconds": "30", "presign_expiry_seconds": 60.0, "poll_policy": {"growth": 2}},
                        output="  ", idempotency_key=" key-1 ")
    assert (coerced.timeout_seconds, coerced.presign_expiry_seconds, coerced.poll_policy.growth) == (30.0, 60, 2)
    assert coerced.output is None and coerced.idempotency_key == "key-1"


def test_settings_are_taken_as_the_model_a_dict_or_json_text():
    given = {"timeout_seconds": "30", "poll_policy": {"growth": 2}}
    parsed = RunSettings.parse(given)
    assert (parsed.timeout_seconds, parsed.poll_policy.growth) == (30.0, 2)
    assert RunSettings.parse(parsed) is parsed
    assert RunSettings.parse('{"timeout_seconds": "30", "poll_policy": {"growth": 2}}') == parsed
    assert RunSettings.parse(None) == RunSettings.parse("") == RunSettings()
    assert check_run(parsed).timeout_seconds == 30.0


@pytest.mark.parametrize("values, message", [
    ({"timeout_seconds": 0}, "timeout_seconds"),
    ({"timeout_seconds": float("inf")}, "finite"),
    ({"timeout_seconds": True}, "timeout_seconds"),
    ({"reconcile_grace_seconds": -0.5}, "reconcile_grace_seconds"),
    ({"presign_expiry_seconds": 1.5}, "whole number"),
    ({"presign_expiry_seconds": 0}, "presign_expiry_seconds"),
    ({"poll_policy": "[1, 2]"}, "poll_policy"),
    ({"poll_policy": {"jitter": 2}}, "poll_policy.jitter"),
    ({"poll_policy": {"every": 1}}, "poll_policy.every"),
    ({"idempotency_scope": "forever"}, "idempotency_scope"),
    ({"output": 5}, "output: must be text"),
    ({"not_a_setting": 1}, "not_a_setting"),
])
def test_refusals_name_the_field(values, message):
    with pytest.raises(InvalidInputError, match=message):
        checked(**values)


def test_all_problems_in_one_message():
    with pytest.raises(InvalidInputError) as info:
        check_run({"timeout_seconds": -1, "reconcile_grace_seconds": -1})
    assert "timeout_seconds" in str(info.value) and "reconcile_grace_seconds" in str(info.value)


def test_the_flows_own_fields_and_the_settings_are_checked_together():
    with pytest.raises(InvalidInputError) as info:
        check_run({"timeout_seconds": -1}, output=5, idempotency_key="k" * 600)
    assert all(name in str(info.value) for name in ("timeout_seconds", "output", "idempotency_key"))
