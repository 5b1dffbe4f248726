"""`aimlapi-video demo`: one real generation through Prefect against a throwaway local sandbox.

No key and no setup: the sandbox (a local stand-in of the AI/ML API that really transforms
video) starts on a free loopback port, a sample clip is made, and the `video_to_video` flow runs
on your Prefect server (PREFECT_API_URL) or, if none is configured, on a temporary one.

The sandbox comes with the `sandbox` extra; without it the demo fails with one line saying how to
install it.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

from prefect_aimlapi_video.blocks import AimlApiCredentials
from prefect_aimlapi_video.deployments.exit_codes import NOTHING_SENT
from prefect_aimlapi_video.deployments.terminal import fail
from prefect_aimlapi_video.flows.video_to_video import video_to_video

try:
    from prefect_aimlapi_video.sandbox import SandboxConfig, make_test_clip, run_sandbox
except ImportError as exc:  # no sandbox extra: `run_demo` says so in one line instead of a traceback
    if "prefect-aimlapi-video[sandbox]" not in str(exc):
        raise
    NO_SANDBOX: str | None = str(exc)
else:
    NO_SANDBOX = None

DEMO_PROMPT = "a watercolor painting, soft pastel palette"


def _where_to_look(flow_run_id: str | None) -> str:
    if PREFECT_API_URL.value() and flow_run_id:
        ui = PREFECT_UI_URL.value() or PREFECT_API_URL.value().removesuffix("/api")
        return f"See the flow run and its artifacts at {ui}/runs/flow-run/{flow_run_id}"
    return (
        "This ran on a temporary Prefect server that is gone now. To browse the run and its artifacts, "
        "start `prefect server start`, `prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api`, "
        "and run the demo again."
    )


def run_demo(output_dir: Path | None = None, processing_seconds: float = 3.0) -> int:
    if NO_SANDBOX is not None:
        return fail(NO_SANDBOX, NOTHING_SENT)  # nothing was sent anywhere: exit 2
    output_dir = (output_dir or Path("aimlapi-outputs")).absolute()
    with tempfile.TemporaryDirectory(prefix="aimlapi-demo-") as scratch, run_sandbox(
        SandboxConfig(processing_seconds=processing_seconds)
    ) as sandbox:
        clip = make_test_clip(Path(scratch) / "sample.mp4", width=480, height=272, seconds=2.0, fps=24)
        print(f"Sandbox at {sandbox.base_url}; sample clip {clip} (480x272, 48 frames).")
        credentials = AimlApiCredentials(api_key=sandbox.api_key, base_url=sandbox.base_url)
        result = asyncio.run(
            video_to_video(
                video=str(clip), prompt=DEMO_PROMPT, strength=0.7, seed=7, credentials=credentials,
                output=str(output_dir / "demo-{stem}-seed{seed}-{generation}.mp4"),
            )
        )
        charges = len(sandbox.ledger())
    print()
    print(f"Output: {result.output}")
    print(result.one_line())
    print(f"Sandbox ledger: {charges} charged request(s) for this run.")
    print(_where_to_look(result.flow_run_id))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_demo())
