"""flows.batch_items: items from lists and manifests, typed by the request's fields, errors naming the row."""

from __future__ import annotations

import pytest

from prefect_aimlapi_video.flows.batch_items import BatchItem, load_manifest, parse_items
from prefect_aimlapi_video.flows.errors import InvalidInputError


async def test_csv_manifest_typed_from_text(tmp_path):
    manifest = tmp_path / "jobs.csv"
    manifest.write_text("video,prompt,strength,seed,enable_prompt_expansion\n"
                        "a.mp4,ink,0.4,7,false\n"
                        "b.mp4,,,,\n")
    first, second = await load_manifest(str(manifest))
    assert (first.video, first.prompt, first.strength, first.seed, first.enable_prompt_expansion) == (
        "a.mp4", "ink", 0.4, 7, False)
    assert (second.prompt, second.strength, second.seed) == (None, None, None)  # blank cells take the defaults


async def test_jsonl_manifest_and_errors_name_the_line(tmp_path):
    good = tmp_path / "jobs.jsonl"
    good.write_text('{"video": "a.mp4", "seed": 3}\n\n{"video": "b.mp4", "output": "out/b.mp4"}\n')
    assert [i.video for i in await load_manifest(str(good))] == ["a.mp4", "b.mp4"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"video": "a.mp4"}\nnot json\n')
    with pytest.raises(InvalidInputError, match="line 2: not JSON"):
        await load_manifest(str(bad))
    typo = tmp_path / "typo.jsonl"
    typo.write_text('{"video": "a.mp4", "promt": "x"}\n')
    with pytest.raises(InvalidInputError, match="item 1: .*promt"):
        await load_manifest(str(typo))


async def test_manifest_refusals(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        await load_manifest(str(tmp_path / "none.csv"))
    headless = tmp_path / "x.csv"
    headless.write_text("prompt\nink\n")
    with pytest.raises(InvalidInputError, match="'video' column"):
        await load_manifest(str(headless))
    other = tmp_path / "x.txt"
    other.write_text("video\n")
    with pytest.raises(InvalidInputError, match=".csv or .jsonl"):
        await load_manifest(str(other))


def test_items_as_dicts_or_objects():
    items = parse_items([{"video": "a.mp4", "strength": 0.2}, BatchItem(video="b.mp4", seed=1)])
    assert [(i.video, i.strength, i.seed) for i in items] == [("a.mp4", 0.2, None), ("b.mp4", None, 1)]
    with pytest.raises(InvalidInputError, match="batch item 0: .*video"):
        parse_items([{"prompt": "no video"}])
