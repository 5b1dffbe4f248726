"""api.requests: the request declared once, and a second model being one class and `@register`.

`Acme` (tests/support/acme_model.py) is a test-only model on the same endpoint with a field of its own (`style`). Nothing
else in the product knows it, yet the overrides, batch items, S3 metadata names, CLI options and
summary rows all pick it up from its class.
"""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from prefect_aimlapi_video.api.errors import InvalidInputError
from prefect_aimlapi_video.api.models import VideoToVideoResult
from prefect_aimlapi_video.api.requests import (
    DEFAULT_MODEL,
    DEFAULTS,
    KreaWan14bVideoToVideo,
    request_fields,
    request_model,
)
from prefect_aimlapi_video.flows.batch_items import batch_item_model
from prefect_aimlapi_video.flows.choices import parse_overrides
from prefect_aimlapi_video.flows.summary import request_rows
from prefect_aimlapi_video.storage.s3_requests import overrides_from_metadata
from tests.support.acme_model import acme_registered


@pytest.fixture
def acme():
    with acme_registered() as model:
        yield model


def test_the_krea_model_is_the_default_and_declares_its_defaults():
    assert request_model(DEFAULT_MODEL) is KreaWan14bVideoToVideo
    assert DEFAULTS == {"strength": 0.85, "seed": None, "enable_prompt_expansion": True}
    assert KreaWan14bVideoToVideo.field_names() == ("prompt", "strength", "seed", "enable_prompt_expansion")
    with pytest.raises(InvalidInputError, match="model 'nope/x' is not supported; known: krea/krea-wan-14b"):
        request_model("nope/x")


def test_a_registered_model_has_its_payload_and_fingerprint(acme):
    request = request_model("acme/style-v2v").validated(prompt="ink", style="bold")
    assert request.payload("https://cdn/x.mp4") == {
        "model": "acme/style-v2v", "video_url": "https://cdn/x.mp4", "prompt": "ink", "strength": 0.5, "style": "bold"}
    krea = KreaWan14bVideoToVideo(prompt="ink", strength=0.5)
    assert request.fingerprint("sha256:x") != krea.fingerprint("sha256:x")  # the model is part of the identity


def test_everything_derived_from_the_request_picks_up_a_new_field(acme):
    assert "style" in request_fields()
    assert parse_overrides('{"style": "noir", "strength": "0.3"}', acme) == {"style": "noir", "strength": 0.3}
    with pytest.raises(InvalidInputError, match="unknown keys \\['seed'\\]"):
        parse_overrides({"seed": 1}, acme)
    item = batch_item_model(acme)(video="a.mp4", style="noir")
    assert item.style == "noir" and item.strength is None and not hasattr(item, "seed")
    assert overrides_from_metadata({"x-amz-meta-aimlapi-style": "x", "Aimlapi-Style": "noir"}) == {"style": "noir"}
    result = VideoToVideoResult(status="completed", model=acme.MODEL, input="a.mp4", prompt="ink", strength=0.5,
                                style="noir")
    assert dict(request_rows(result)) == {"Prompt": "ink", "Strength": "0.5", "Style": "noir"}


def test_cli_options_come_from_the_registered_models(acme):
    from prefect_aimlapi_video.deployments.cli_options import _request_options, request_values

    parser = argparse.ArgumentParser()
    _request_options(parser)
    args = parser.parse_args(["--prompt", "ink", "--style", "noir", "--no-prompt-expansion", "--model", acme.MODEL])
    values: dict[str, Any] = request_values(args)
    assert values["prompt"] == "ink" and values["enable_prompt_expansion"] is False
    assert values["model"] == acme.MODEL and values["overrides"] == {"style": "noir"}  # not a flow parameter


def test_text_values_are_typed_by_the_field():
    typed = KreaWan14bVideoToVideo.from_text(
        {"strength": " 0.4 ", "seed": "7", "enable_prompt_expansion": "off", "prompt": "42"})
    assert typed == {"strength": 0.4, "seed": 7, "enable_prompt_expansion": False, "prompt": "42"}
    assert KreaWan14bVideoToVideo.from_text({"seed": "seven", "strength": "high"}) == {"seed": "seven",
                                                                                        "strength": "high"}
