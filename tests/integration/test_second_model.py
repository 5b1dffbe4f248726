"""A second model, declared in one file, reaches the three flows and the CLI unchanged.

`Acme` (tests/support/acme_model.py, the only file it touches) is one `VideoRequest` subclass with a field the Krea model lacks (`style`) and its own
default `strength`. Registering it is all it takes: the single flow takes its fields through
`overrides`, a batch through its items' columns, a sweep through a manifest's columns, the CLI
through the `--style` option made from the field. A sandbox that also answers to the model's name
records what each POST carried, so every assertion is on what reached the provider's side.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from prefect_aimlapi_video.api.requests import VideoRequest
from prefect_aimlapi_video.blocks import AimlApiCredentials
from prefect_aimlapi_video.flows.batch import video_to_video_batch
from prefect_aimlapi_video.flows.folder import video_to_video_folder
from prefect_aimlapi_video.flows.video_to_video import video_to_video
from prefect_aimlapi_video.sandbox import SandboxConfig, run_sandbox
from tests.support.acme_model import Acme, acme_registered
from tests.support.reliability import last_line, subprocess_env

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def acme() -> Iterator[type[VideoRequest]]:
    with acme_registered() as model:
        yield model


@pytest.fixture(scope="module")
def acme_sandbox() -> Iterator:
    with run_sandbox(SandboxConfig(processing_seconds=0.2, workers=8, extra_models=[Acme.MODEL])) as handle:
        yield handle


@pytest.fixture
def creds(acme_sandbox) -> AimlApiCredentials:
    acme_sandbox.reset()
    return AimlApiCredentials(api_key=acme_sandbox.api_key, base_url=acme_sandbox.base_url)


def sent(sandbox) -> list[tuple[str, str, float, dict]]:
    """What reached the provider: (model, prompt, strength, the model's own fields), per POST."""
    return sorted((e.model, e.prompt, e.strength, e.fields) for e in sandbox.ledger())


async def test_the_single_flow_sends_its_fields_from_overrides(prefect_server, acme, acme_sandbox, creds, clips,
                                                               tmp_path):
    result = await video_to_video(video=str(clips["small"]), prompt="ink", model=Acme.MODEL,
                                  overrides={"style": "noir"}, credentials=creds, output=str(tmp_path / "{stem}.mp4"))
    assert result.status == "completed" and Path(result.output).is_file()
    assert result.model == Acme.MODEL and result.generation_id.endswith(f":{Acme.MODEL}")
    assert sent(acme_sandbox) == [(Acme.MODEL, "ink", 0.5, {"style": "noir"})]  # Acme's own default strength


async def test_a_batch_takes_the_fields_as_item_columns(prefect_server, acme, acme_sandbox, creds, clips, tmp_path):
    rows = await video_to_video_batch(
        items=[{"video": str(clips["small"]), "style": "bold"}, {"video": str(clips["odd"]), "strength": 0.2}],
        prompt="ink", model=Acme.MODEL, overrides={"style": "noir"}, credentials=creds,
        output=str(tmp_path / "{stem}.mp4"),
    )
    assert [row.status for row in rows] == ["completed", "completed"]
    assert sent(acme_sandbox) == [(Acme.MODEL, "ink", 0.2, {"style": "noir"}), (Acme.MODEL, "ink", 0.5, {"style": "bold"})]


async def test_a_sweep_takes_the_fields_as_manifest_columns(prefect_server, acme, acme_sandbox, creds, clips,
                                                            tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.mp4").write_bytes(clips["small"].read_bytes())
    (inputs / "jobs.csv").write_text(f"video,style\n{inputs / 'a.mp4'},sketch\n")
    rows = await video_to_video_folder(source=str(inputs / "jobs.csv"), output_prefix=str(tmp_path / "out"),
                                       prompt="ink", model=Acme.MODEL, credentials=creds)
    assert [row.status for row in rows] == ["completed"]
    assert (tmp_path / "out" / "a.mp4").is_file()
    assert sent(acme_sandbox) == [(Acme.MODEL, "ink", 0.5, {"style": "sketch"})]


def test_the_cli_has_an_option_per_field_and_sends_it(prefect_server, acme_sandbox, creds, clips, tmp_path):
    program = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
               "from tests.support.acme_model import register_acme; register_acme(); "
               "from prefect_aimlapi_video.deployments.cli import main; raise SystemExit(main(sys.argv[1:]))")
    command = [sys.executable, "-c", program, str(ROOT), "run", str(clips["small"]), "--model", Acme.MODEL,
               "--prompt", "ink", "--style", "noir", "--base-url", acme_sandbox.base_url,
               "--output", str(tmp_path / "cli.mp4"), "--submissions", str(tmp_path / "records")]
    env = subprocess_env(AIMLAPI_API_KEY=acme_sandbox.api_key)
    helped = subprocess.run([*command[:4], "run", "--help"], env=env, capture_output=True, text=True, timeout=120)
    assert "--style" in helped.stdout and "A house style." in " ".join(helped.stdout.split())
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "cli.mp4").is_file(), last_line(done.stdout)
    assert sent(acme_sandbox) == [(Acme.MODEL, "ink", 0.5, {"style": "noir"})]
