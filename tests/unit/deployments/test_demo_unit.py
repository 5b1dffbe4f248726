"""deployments.demo without its servers: where the closing line sends a person (the run's page on a
configured Prefect server, or how to get one after a temporary server), and what `run_demo` hands
the flow and prints, with the sandbox, the sample clip and the flow replaced by stand-ins (the real
demo runs in the integration tests)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

from prefect_aimlapi_video.api.models import VideoToVideoResult
from prefect_aimlapi_video.deployments import demo
from prefect_aimlapi_video.sandbox import SandboxHandle

RUN_ID = "0b3e2a9c-1111-4222-8333-444455556666"


def test_with_a_configured_server_the_last_line_links_the_flow_run_in_its_ui():
    with temporary_settings({PREFECT_API_URL: "http://prefect.internal:4200/api"}):
        assert demo._where_to_look(RUN_ID) == f"See the flow run and its artifacts at http://prefect.internal:4200/runs/flow-run/{RUN_ID}"
    with temporary_settings({PREFECT_API_URL: "http://prefect.internal:4200/api", PREFECT_UI_URL: "https://ui.example"}):
        assert demo._where_to_look(RUN_ID).endswith(f" https://ui.example/runs/flow-run/{RUN_ID}")


def test_after_a_temporary_server_the_last_line_says_how_to_keep_the_run():
    with temporary_settings(restore_defaults={PREFECT_API_URL, PREFECT_UI_URL}):
        text = demo._where_to_look(RUN_ID)
    assert text.startswith("This ran on a temporary Prefect server that is gone now.")
    assert "prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api" in text and RUN_ID not in text


class FakeSandbox(SandboxHandle):
    def ledger(self) -> list:
        return ["charge-1", "charge-2"]


def test_run_demo_hands_the_flow_the_sandbox_and_an_absolute_output_template_and_prints_the_outcome(
    monkeypatch, tmp_path, capsys
):
    calls: dict = {}
    sandbox = FakeSandbox(base_url="http://127.0.0.1:5999", api_key="demo-key")

    @contextmanager
    def run_sandbox(config):
        calls["processing_seconds"] = config.processing_seconds
        yield sandbox

    def make_test_clip(path, **shape):
        calls["clip"] = Path(path)
        Path(path).write_bytes(b"clip")
        return Path(path)

    async def video_to_video(**kwargs):
        calls["flow"] = kwargs
        assert Path(kwargs["video"]).exists()  # the sample clip is there while the flow runs
        return VideoToVideoResult(status="completed", model="m", input=kwargs["video"], generation_id="g-1",
                                  output="/out/demo.mp4", flow_run_id=RUN_ID)

    monkeypatch.setattr(demo, "run_sandbox", run_sandbox)
    monkeypatch.setattr(demo, "make_test_clip", make_test_clip)
    monkeypatch.setattr(demo, "video_to_video", video_to_video)
    monkeypatch.chdir(tmp_path)

    with temporary_settings({PREFECT_API_URL: "http://prefect.internal:4200/api"}):
        assert demo.run_demo(processing_seconds=0.5) == 0

    flow = calls["flow"]
    assert calls["processing_seconds"] == 0.5
    assert flow["output"] == str(tmp_path / "aimlapi-outputs" / "demo-{stem}-seed{seed}-{generation}.mp4")
    assert flow["video"] == str(calls["clip"]) and flow["prompt"] == demo.DEMO_PROMPT
    assert (flow["credentials"].base_url, flow["credentials"].api_key.get_secret_value()) == (sandbox.base_url,
                                                                                                 "demo-key")
    assert not calls["clip"].exists()  # the scratch folder is gone afterwards
    lines = capsys.readouterr().out.splitlines()
    assert "Output: /out/demo.mp4" in lines
    assert "Sandbox ledger: 2 charged request(s) for this run." in lines
    assert lines[-1].endswith(f"/runs/flow-run/{RUN_ID}")
