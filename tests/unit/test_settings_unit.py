"""prefect_aimlapi_video.flows.settings: every setting coerced or refused before anything is paid."""

from __future__ import annotations

import pytest

from prefect_aimlapi_video.api.errors import InvalidInputError
from prefect_aimlapi_video.flows.settings import validate_settings


def test_defaults_and_coercions():
    default = validate_settings()
    assert default.poll_policy is None and default.idempotency_scope == "flow-run"  # None: learned
    assert default.timeout_seconds == 1200 and default.reconcile_grace_seconds == 1200
    coerced = validate_settings(timeout_seconds="30", presign_expiry_seconds=60.0, poll_policy={"growth": 2},
                                output="  ", idempotency_key=" key-1 ")
    assert (coerced.timeout_seconds, coerced.presign_expiry_seconds, coerced.poll_policy.growth) == (30.0, 60, 2)
    assert coerced.output is None and coerced.idempotency_key == "key-1"


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
        validate_settings(**values)


def test_all_problems_in_one_message():
    with pytest.raises(InvalidInputError) as info:
        validate_settings(timeout_seconds=-1, reconcile_grace_seconds=-1)
    assert "timeout_seconds" in str(info.value) and "reconcile_grace_seconds" in str(info.value)
