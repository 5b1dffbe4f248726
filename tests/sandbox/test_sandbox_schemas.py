"""Every kind of generation response validates against the provider's two OpenAPI fragments."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SHARED_API = Path(__file__).resolve().parents[3] / "shared" / "api"


def test_schema_copies_are_identical_to_the_shared_originals(schema_dir: Path) -> None:
    copies = sorted(path.name for path in schema_dir.glob("openapi-*.json"))
    assert copies == ["openapi-get-video-generations.json", "openapi-post-video-generations.json"]
    for name in copies:
        json.loads((schema_dir / name).read_text())
    if SHARED_API.is_dir():  # absent in a clean clone (CI); present in the workspace the copies come from
        assert sorted(path.name for path in SHARED_API.glob("openapi-*.json")) == copies
        for name in copies:
            assert (schema_dir / name).read_bytes() == (SHARED_API / name).read_bytes(), name


def test_validators_enforce_the_contract(post_schema, get_schema) -> None:
    """The nullable conversion keeps the schemas strict where they are strict."""
    get_schema.validate({"id": "x", "status": "queued", "video": None, "meta": None, "error": None, "duration": None})
    get_schema.validate({"id": "x", "status": "error", "error": {"detail": [{"loc": ["body"], "msg": "m"}]}})
    post_schema.validate({"id": "x", "status": "queued", "meta": {"usage": {"credits_used": 1}}})
    for invalid in (
        {"id": "x", "status": "processing"},
        {"id": "x", "status": "completed", "video": {"duration": 1}},
        {"id": "x", "status": "queued", "meta": {"usage": {"credits_used": 1}}},
        {"status": "queued"},
    ):
        assert not get_schema.is_valid(invalid), invalid
    assert not post_schema.is_valid({"id": "x", "status": "queued", "meta": {"usage": {"tokens_used": 1}}})
    assert not post_schema.is_valid({"id": "x", "status": "error", "error": {"name": "only a name"}})


def test_queued_generating_and_completed_responses_validate(make_api, clip_uri, post_schema, get_schema) -> None:
    api = make_api(processing_seconds=0.6, workers=1)
    posts = [api.submit(clip_uri, seed=seed) for seed in (1, 2)]
    for response in posts:
        assert response.status_code == 200
        post_schema.validate(response.json())
        assert response.json()["status"] == "queued"
    first, second = (api.poll(r.json()["id"]).json() for r in posts)
    assert (first["status"], second["status"]) == ("generating", "queued")  # one GPU slot: the second waits
    get_schema.validate(first)
    get_schema.validate(second)
    completed = api.wait(first["id"])
    assert completed["status"] == "completed"
    get_schema.validate(completed)
    assert completed["video"]["url"].startswith(api.handle.base_url + "/files/")


@pytest.mark.parametrize("kind", ["input", "injected"])
def test_error_responses_validate(api, get_schema, kind: str) -> None:
    if kind == "injected":
        api.handle.set_faults({"script": [{"route": "submit", "kind": "generation_error", "times": 1}]})
        video_url = "data:video/mp4;base64,AAAA"
    else:
        video_url = "data:text/plain;base64,bm90IGEgdmlkZW8="
    final = api.wait(api.submit(video_url).json()["id"])
    assert final["status"] == "error"
    get_schema.validate(final)


def test_extra_fields_stay_schema_valid(api, tiny_uri, post_schema, get_schema) -> None:
    api.handle.set_faults(
        {
            "script": [
                {"route": "submit", "kind": "extra_fields"},
                {"route": "poll", "kind": "extra_fields", "times": 100},
            ]
        }
    )
    posted = api.submit(tiny_uri).json()
    assert "x_sandbox_extra" in posted and "x_sandbox_extra" in posted["meta"]["usage"]
    post_schema.validate(posted)
    final = api.wait(posted["id"])
    assert "x_sandbox_extra" in final and "x_sandbox_extra" in final["video"]
    get_schema.validate(final)
