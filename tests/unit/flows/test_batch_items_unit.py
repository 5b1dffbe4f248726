"""flows.batch_items: items from lists and manifests, typed by the request's fields, errors naming the row."""

from __future__ import annotations

import pytest

from prefect_aimlapi_video.api.errors import InvalidInputError
from prefect_aimlapi_video.flows.batch_items import BatchItem, ItemBase, child_arguments, load_manifest, parse_items


async def test_csv_manifest_typed_from_text(tmp_path):
    manifest = tmp_path / "jobs.csv"
    manifest.write_text("video,prompt,strength,seed,enable_prompt_expansion\n"
                        "a.mp4,ink,0.4,7,false\n"
                        "b.mp4,,,,\n")
    first, second = await load_manifest(str(manifest))
    assert (first.video, first.prompt, first.strength, first.seed, first.enable_prompt_expansion) == (
        str(tmp_path / "a.mp4"), "ink", 0.4, 7, False)  # a relative local video lies beside the manifest
    assert (second.prompt, second.strength, second.seed) == (None, None, None)  # blank cells take the defaults


async def test_jsonl_manifest_and_errors_name_the_line(tmp_path):
    good = tmp_path / "jobs.jsonl"
    good.write_text('{"video": "a.mp4", "seed": 3}\n\n{"video": "b.mp4", "output": "out/b.mp4"}\n')
    items = await load_manifest(str(good), output_root=str(tmp_path / "results"))
    assert [i.video for i in items] == [str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4")]
    assert items[1].output == str(tmp_path / "results" / "out" / "b.mp4")  # placed under the output root
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


@pytest.mark.parametrize("row, why", [
    ({"video": "a.mp4", "output": "/etc/cron.d/job"}, "output '/etc/cron.d/job' is not under"),
    ({"video": "a.mp4", "output": "../../home/user/.bashrc"}, "is not under"),
    ({"video": "a.mp4", "output": "s3://other-bucket/x.mp4"}, "is not under"),
    ({"video": "/home/user/private.mp4"}, "video '/home/user/private.mp4' is not under"),
    ({"video": "../outside.mp4"}, "is not under"),
])
async def test_a_manifest_cannot_reach_outside_its_roots(tmp_path, row, why):
    """A manifest is data (an S3 upload, say): its outputs stay under the batch's output root and its
    local videos under the input root, whatever it says."""
    import json

    (tmp_path / "inputs").mkdir()
    manifest = tmp_path / "inputs" / "jobs.jsonl"
    manifest.write_text(json.dumps(row) + "\n")
    with pytest.raises(InvalidInputError, match=f"item 1: .*{why}"):
        await load_manifest(str(manifest), output_root=str(tmp_path / "out"))


async def test_an_s3_output_root_keeps_a_manifests_outputs_under_it():
    from prefect_aimlapi_video.flows.batch_items import confined, output_root

    assert output_root("s3://media/out/{stem}.mp4") == "s3://media/out/"
    assert output_root("/srv/out/{stem}/x.mp4") == "/srv/out/"
    assert output_root(None) == "aimlapi-outputs"
    assert confined("clip.mp4", "s3://media/out/", "output") == "s3://media/out/clip.mp4"
    assert confined("s3://media/out/a/b.mp4", "s3://media/out/", "output") == "s3://media/out/a/b.mp4"
    with pytest.raises(InvalidInputError, match="not under"):
        confined("s3://media/out/../secret.mp4", "s3://media/out/", "output")


def test_a_child_gets_the_named_fields_as_parameters_and_the_others_as_overrides():
    item = BatchItem(video="a.mp4", seed=3, output="o.mp4")
    batch = {"model": "m", "credentials": "c", "overrides": {"prompt": "ink", "style": "noir", "seed": 1}}
    assert child_arguments(batch, item) == {"model": "m", "credentials": "c", "video": "a.mp4", "output": "o.mp4",
                                            "prompt": "ink", "seed": 3, "overrides": {"style": "noir"}}
    assert child_arguments({"credentials": "c"}, ItemBase(video="b.mp4"))["overrides"] is None


def test_a_row_without_the_childs_state_says_what_the_child_knew() -> None:
    """Prefect could not hand a child's final state back (its API failing): the row keeps the paid
    generation the child delivered, or the one its failure names with the command that collects it."""
    from types import SimpleNamespace

    from prefect_aimlapi_video.api.errors import DeliveryFailed
    from prefect_aimlapi_video.flows.batch_context import ChildOutcome, child_outcome, keep_outcome
    from prefect_aimlapi_video.flows.batch_items import BatchItemResult, row_without_state

    row = BatchItemResult(index=3, video="clip.mp4", status="failed")
    lost_api = RuntimeError("500 Internal Server Error for url .../set_state")
    assert row_without_state(row, ChildOutcome(), lost_api).error == (
        "could not run: RuntimeError: 500 Internal Server Error for url .../set_state")

    failure = DeliveryFailed("gen-1:model", OSError("disk full"))
    failure.collect_command = "aimlapi-video collect gen-1:model --output out.mp4"
    with child_outcome() as outcome:
        keep_outcome(failure=failure)
    failed = row_without_state(row, outcome, lost_api)
    assert (failed.status, failed.generation_id, failed.collect_command) == (
        "failed", "gen-1:model", "aimlapi-video collect gen-1:model --output out.mp4")
    assert failed.error.startswith("Generation gen-1:model is paid for")

    timing = SimpleNamespace(model_dump=lambda: {"total_s": 9.5})
    result = SimpleNamespace(status="completed", generation_id="gen-2:model", output="out.mp4", credits=63000.0,
                             timing=timing, flow_run_id="run-7")
    with child_outcome() as outcome:
        keep_outcome(result=result)
    done = row_without_state(row, outcome, lost_api)
    assert (done.status, done.generation_id, done.output, done.flow_run_id, done.total_s, done.error) == (
        "completed", "gen-2:model", "out.mp4", "run-7", 9.5, None)
    keep_outcome(result=result)  # outside a batch: kept nowhere, and no error
