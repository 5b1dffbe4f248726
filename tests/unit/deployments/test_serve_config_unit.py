"""The deployment definitions as `serve` reads them from deployments/prefect.yaml, and per-object overrides."""

from __future__ import annotations

import pytest

from prefect_aimlapi_video.api.errors import InvalidInputError
from prefect_aimlapi_video.deployments.serve import load_deployments
from prefect_aimlapi_video.flows.choices import parse_overrides


def test_prefect_yaml_defines_a_triggered_and_a_scheduled_deployment(monkeypatch):
    monkeypatch.setenv("AIMLAPI_BUCKET", "media")
    upload, sweep = load_deployments()

    assert upload.name == "on-s3-upload" and upload.entrypoint.endswith("video_to_video.py:video_to_video")
    (trigger,) = upload.triggers
    assert trigger.match.model_dump() == {"prefect.resource.id": "s3://media/incoming/*"}
    assert trigger.expect == {"aimlapi.s3.object.created"}
    assert trigger.parameters["video"] == "{{ event.resource.id }}"  # trigger templates are left for Prefect
    assert "s3.etag" in trigger.parameters["idempotency_key"]
    assert upload.parameters["output"].startswith("s3://media/outputs/")
    assert sweep.name == "nightly-sweep" and sweep.schedules[0].schedule.cron == "0 2 * * *"
    assert sweep.parameters["source"] == "s3://media/incoming/"


def test_trigger_and_sweep_agree_on_key_output_and_request(monkeypatch):
    """What makes two runs the same generation must be the same for the upload trigger and the sweep."""
    import jinja2

    from prefect_aimlapi_video.storage.s3_requests import object_idempotency_key

    monkeypatch.setenv("AIMLAPI_BUCKET", "media")
    upload, sweep = load_deployments()
    assert sweep.parameters["output_prefix"] + sweep.parameters["output_name"] == upload.parameters["output"]
    for name in ("prompt", "strength", "seed", "enable_prompt_expansion"):
        assert sweep.parameters.get(name) == upload.parameters.get(name), name
    event = {"resource": {"id": "s3://media/incoming/a b.mp4", "s3.etag": "0abc"}, "payload": {}}

    class Resource(dict):  # Prefect's templates see `event.resource.id` and `.get('s3.etag')`
        id = event["resource"]["id"]

    rendered = jinja2.Template(upload.triggers[0].parameters["idempotency_key"]).render(
        event={"resource": Resource(event["resource"]), "payload": {}})
    assert rendered == object_idempotency_key("s3://media/incoming/a b.mp4", '"0abc"')


def test_missing_environment_variable_is_named(monkeypatch):
    monkeypatch.delenv("AIMLAPI_BUCKET", raising=False)
    with pytest.raises(SystemExit, match="AIMLAPI_BUCKET"):
        load_deployments()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (None, {}),
        ("", {}),
        ("{}", {}),
        ('{"prompt": "ink", "strength": "0.4", "seed": "7", "enable_prompt_expansion": "false"}',
         {"prompt": "ink", "strength": 0.4, "seed": 7, "enable_prompt_expansion": False}),
        ({"seed": 3}, {"seed": 3}),
        ({"strength": "high"}, {"strength": "high"}),  # left as text: GenerationParams names the field
    ],
)
def test_overrides_are_typed_from_text(overrides, expected):
    assert parse_overrides(overrides) == expected


@pytest.mark.parametrize("overrides", ['{"promt": "typo"}', "not json", "[1, 2]"])
def test_bad_overrides_are_refused(overrides):
    with pytest.raises(InvalidInputError):
        parse_overrides(overrides)
