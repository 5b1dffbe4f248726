"""flows.folder: the sweep's output names, stable from run to run and shared with the upload trigger."""

from __future__ import annotations

import pytest

from prefect_aimlapi_video.api.errors import InvalidInputError
from prefect_aimlapi_video.flows.folder import _check_output_name, _render


def test_output_names_use_only_fields_that_stay_the_same():
    _check_output_name("{stem}-{seed}-{strength}.mp4", "s3://b/in/")
    _check_output_name("{stem}-{fingerprint}.mp4", "s3://b/in/")
    for unstable in ("{generation}", "{flow_run}", "{date}"):
        with pytest.raises(InvalidInputError, match="may use only"):
            _check_output_name(f"{{stem}}-{unstable}.mp4", "s3://b/in/")
    with pytest.raises(InvalidInputError, match="only when sweeping an s3:// prefix"):
        _check_output_name("{fingerprint}.mp4", "jobs.csv")


def test_rendered_names_match_what_the_flow_would_write():
    fingerprint = "0123456789abcdef" * 4
    assert _render("s3://b/outputs/", "{stem}-{fingerprint}.mp4", "s3://b/incoming/own prompt.mp4", None, 0.85,
                   fingerprint) == "s3://b/outputs/own-prompt-0123456789ab.mp4"
    assert _render("/out", "{stem}-{seed}-{strength}.mp4", "clip.mov", 7, 0.5) == "/out/clip-7-0.5.mp4"
    assert _render("/out", "{stem}-{seed}.mp4", "https://x/y/clip.mp4?sig=1", None, 0.5) == "/out/clip-random.mp4"
