"""api.requests (strict GenerationParams, the Krea request) and api.models (lenient Generation, credits)."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from prefect_aimlapi_video.api.models import Generation, Phase, credits_to_usd
from prefect_aimlapi_video.api.requests import DEFAULT_MODEL as MODEL
from prefect_aimlapi_video.api.requests import GenerationParams

POST_SAMPLE = {
    "id": "3637be63-e8d1-4ac1-9a4b-00afbdf10a55:krea/krea-wan-14b/video-to-video",
    "status": "queued",
    "meta": {"usage": {"tokens_used": 315000}},
}


# ---------------------------------------------------------------- GenerationParams: prompt


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t "])
def test_empty_or_whitespace_prompt_refused(prompt):
    with pytest.raises(ValidationError, match="prompt is empty"):
        GenerationParams(prompt=prompt)


def test_prompt_over_2000_chars_refused_and_2000_accepted():
    with pytest.raises(ValidationError, match="2001 characters; the maximum is 2000"):
        GenerationParams(prompt="x" * 2001)
    assert len(GenerationParams(prompt="x" * 2000).prompt) == 2000


@pytest.mark.parametrize("prompt", [None, 42, ["a prompt"], b"bytes prompt"])
def test_non_text_prompt_refused(prompt):
    with pytest.raises(ValidationError, match="prompt must be text"):
        GenerationParams(prompt=prompt)


def test_prompt_is_stripped():
    assert GenerationParams(prompt="  watercolor  ").prompt == "watercolor"


# ---------------------------------------------------------------- strength


@pytest.mark.parametrize("strength", [1.5, -0.1, float("nan"), float("inf"), float("-inf"), 2])
def test_strength_out_of_range_or_not_finite_refused(strength):
    with pytest.raises(ValidationError, match="strength must be between 0 and 1"):
        GenerationParams(prompt="p", strength=strength)


@pytest.mark.parametrize("strength", ["high", "0.5", True, False, None, [0.5]])
def test_strength_of_wrong_type_refused(strength):
    with pytest.raises(ValidationError, match="strength must be a number"):
        GenerationParams(prompt="p", strength=strength)


@pytest.mark.parametrize("strength, expected", [(0, 0.0), (1, 1.0), (0.0, 0.0), (1.0, 1.0), (0.5, 0.5)])
def test_strength_bounds_and_ints_accepted(strength, expected):
    value = GenerationParams(prompt="p", strength=strength).strength
    assert value == expected and type(value) is float


def test_strength_default_is_085():
    assert GenerationParams(prompt="p").strength == 0.85


# ---------------------------------------------------------------- seed


@pytest.mark.parametrize("seed", [1.5, 7.0, "7", True, False, [1]])
def test_seed_of_wrong_type_refused(seed):
    with pytest.raises(ValidationError, match="seed must be a whole number"):
        GenerationParams(prompt="p", seed=seed)


@pytest.mark.parametrize("seed", [-1, 2**32, 2**40])
def test_seed_out_of_range_refused(seed):
    with pytest.raises(ValidationError, match="seed must be between 0 and 4294967295"):
        GenerationParams(prompt="p", seed=seed)


@pytest.mark.parametrize("seed", [None, 0, 7, 2**32 - 1])
def test_seed_accepted(seed):
    assert GenerationParams(prompt="p", seed=seed).seed == seed


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_enable_prompt_expansion_must_be_bool(value):
    with pytest.raises(ValidationError, match="enable_prompt_expansion must be true or false"):
        GenerationParams(prompt="p", enable_prompt_expansion=value)


def test_unknown_field_refused_and_params_frozen():
    with pytest.raises(ValidationError):
        GenerationParams(prompt="p", model="some/other-model")
    params = GenerationParams(prompt="p")
    with pytest.raises(ValidationError):
        params.strength = 0.1


# ---------------------------------------------------------------- payload


def test_payload_without_seed_omits_it():
    body = GenerationParams(prompt="neon city", strength=0.4).payload("https://cdn.test/in.mp4")
    assert body == {
        "model": MODEL,
        "prompt": "neon city",
        "video_url": "https://cdn.test/in.mp4",
        "strength": 0.4,
        "enable_prompt_expansion": True,
    }
    assert "seed" not in body
    assert MODEL == "krea/krea-wan-14b/video-to-video"


def test_payload_with_seed_zero_keeps_it():
    body = GenerationParams(prompt="p", seed=0, enable_prompt_expansion=False).payload("data:video/mp4;base64,AAAA")
    assert body["seed"] == 0
    assert body["enable_prompt_expansion"] is False
    assert body["model"] == MODEL


# ---------------------------------------------------------------- fingerprint


def test_fingerprint_stable_across_instances():
    a = GenerationParams(prompt="watercolor", strength=0.5, seed=3)
    b = GenerationParams(prompt="watercolor", strength=0.5, seed=3)
    assert a is not b
    assert a.fingerprint("sha256:abc") == b.fingerprint("sha256:abc")
    assert len(a.fingerprint("sha256:abc")) == 64
    # int and float spellings of the same strength are the same request
    assert GenerationParams(prompt="p", strength=1).fingerprint("v") == GenerationParams(
        prompt="p", strength=1.0
    ).fingerprint("v")


@pytest.mark.parametrize(
    "changed",
    [
        {"prompt": "oil painting"},
        {"strength": 0.51},
        {"seed": 4},
        {"seed": None},
        {"enable_prompt_expansion": False},
    ],
)
def test_fingerprint_sensitive_to_each_field(changed):
    base = {"prompt": "watercolor", "strength": 0.5, "seed": 3, "enable_prompt_expansion": True}
    original = GenerationParams(**base).fingerprint("sha256:abc")
    assert GenerationParams(**{**base, **changed}).fingerprint("sha256:abc") != original


def test_fingerprint_sensitive_to_video_identity():
    params = GenerationParams(prompt="watercolor")
    assert params.fingerprint("sha256:aaa") != params.fingerprint("sha256:aab")


# ---------------------------------------------------------------- Generation (lenient)


def test_parses_provider_post_sample():
    generation = Generation.model_validate(POST_SAMPLE)
    assert generation.id == POST_SAMPLE["id"]
    assert generation.status == "queued"
    assert generation.phase is Phase.PENDING
    assert generation.credits == 315000
    assert generation.video is None


def test_reads_credits_used_shape():
    generation = Generation.model_validate({"id": "g", "status": "queued", "meta": {"usage": {"credits_used": 1234.5}}})
    assert generation.credits == 1234.5


def test_credits_used_preferred_over_tokens_used_and_missing_usage_is_none():
    both = Generation.model_validate(
        {"id": "g", "status": "queued", "meta": {"usage": {"credits_used": 10, "tokens_used": 20}}}
    )
    assert both.credits == 10
    assert Generation.model_validate({"id": "g", "status": "queued", "meta": None}).credits is None
    assert Generation.model_validate({"id": "g", "status": "queued", "meta": {"usage": None}}).credits is None
    assert Generation.model_validate({"id": "g", "status": "queued", "meta": {"usage": {}}}).credits is None


def test_unknown_extra_fields_do_not_break_parsing():
    generation = Generation.model_validate(
        {
            "id": "g",
            "status": "completed",
            "video": {"url": "https://cdn.test/out.mp4", "duration": 2.5, "thumbnail": "x"},
            "future_field": {"nested": [1, 2]},
            "meta": {"usage": {"tokens_used": 7, "new_counter": 3}, "region": "eu"},
        }
    )
    assert generation.phase is Phase.COMPLETED
    assert generation.video.url == "https://cdn.test/out.mp4"
    assert generation.video_duration == 2.5
    assert generation.credits == 7


def test_video_duration_falls_back_to_top_level_duration():
    generation = Generation.model_validate(
        {"id": "g", "status": "completed", "video": {"url": "https://cdn.test/o.mp4"}, "duration": 4.0}
    )
    assert generation.video_duration == 4.0


@pytest.mark.parametrize("status", ["waiting", "active", "queued", "generating"])
def test_pending_words(status):
    assert Generation(id="g", status=status).phase is Phase.PENDING


@pytest.mark.parametrize("status, phase", [("completed", Phase.COMPLETED), ("COMPLETED", Phase.COMPLETED),
                                           ("error", Phase.FAILED), ("failed", Phase.FAILED)])
def test_final_words(status, phase):
    assert Generation(id="g", status=status).phase is phase


@pytest.mark.parametrize("status", ["upscaling", "moderation_hold", ""])
def test_unknown_status_is_unknown_phase(status):
    assert Generation(id="g", status=status).phase is Phase.UNKNOWN


def test_error_summary_name_message():
    generation = Generation(id="g", status="error", error={"name": "ModelError", "message": "CUDA out of memory"})
    assert generation.error_summary() == ("ModelError", "CUDA out of memory")


def test_error_summary_validation_detail_hides_input():
    signed = "https://bucket.s3.amazonaws.com/in.mp4?X-Amz-Signature=DEADBEEFSIG&X-Amz-Credential=AKIAXYZ"
    generation = Generation(
        id="g",
        status="error",
        error={
            "detail": [
                {"loc": ["body", "video_url"], "msg": "video could not be decoded", "type": "value_error", "input": signed},
                {"loc": ["body", "strength"], "msg": "must be <= 1", "type": "less_than_equal", "input": 3},
            ]
        },
    )
    name, message = generation.error_summary()
    assert name == "ValidationError"
    assert "video_url: video could not be decoded" in message
    assert "strength: must be <= 1" in message
    assert "body" not in message
    for secret in ("DEADBEEFSIG", "AKIAXYZ", "bucket.s3.amazonaws.com", signed):
        assert secret not in message


def test_error_summary_for_string_and_none_and_other_dicts():
    assert Generation(id="g", status="error", error="upstream partner failed").error_summary() == (
        "GenerationError",
        "upstream partner failed",
    )
    name, message = Generation(id="g", status="error", error=None).error_summary()
    assert name == "GenerationError" and "without details" in message
    name, message = Generation(id="g", status="error", error={"code": 17}).error_summary()
    assert name == "GenerationError" and '"code": 17' in message


def test_generation_requires_id_and_status():
    with pytest.raises(ValidationError):
        Generation.model_validate({"status": "queued"})
    with pytest.raises(ValidationError):
        Generation.model_validate({"id": "g"})


# ---------------------------------------------------------------- credits


def test_credits_to_usd():
    assert math.isclose(credits_to_usd(315000), 0.1575)
    assert credits_to_usd(2_000_000) == 1.0
    assert credits_to_usd(None) is None
