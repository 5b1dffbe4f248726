"""Your own flow from the three tasks, with the summary, link and events `video_to_video` publishes.

    AIMLAPI_API_KEY=... python compose_tasks.py clip.mp4 "a watercolor painting" [BASE_URL]

BASE_URL (or AIMLAPI_BASE_URL) defaults to https://api.aimlapi.com. To try it for free, start the
sandbox (`aimlapi-video sandbox`) and pass http://127.0.0.1:8787 with AIMLAPI_API_KEY=sandbox-key.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from prefect import flow
from prefect.runtime import flow_run

from prefect_aimlapi_video import (
    AimlApiCredentials,
    GenerationParams,
    VideoToVideoResult,
    download_video,
    publish_generation,
    submit_generation,
    wait_for_generation,
)


@flow(name="my-restyle")
async def my_restyle(
    video: str,  # a local file, an https URL, a data URI or s3://bucket/key
    prompt: str,
    seed: int | None = None,
    output: str = "restyled/{stem}-{generation}.mp4",  # a template, as video_to_video's `output`
    credentials: str | AimlApiCredentials = "aimlapi",  # a block, or its name
) -> VideoToVideoResult:
    request = GenerationParams(prompt=prompt, seed=seed)
    started = time.time()
    submitted = outcome = stored = None  # whatever has returned when something fails
    try:
        # 1. POST at most once in this scope: a retry of the task, or of this flow run, resumes the
        #    same generation instead of paying again. No other run shares this flow run's scope.
        submitted = await submit_generation(request, video, credentials, scope=f"flow-run:{flow_run.id}",
                                            shared_scope=False)
        # 2. Poll (polls are free) until it completes; raises if it fails or takes too long.
        outcome = await wait_for_generation(submitted, credentials)
        # 3. Download, verify and store it. The task renders the template: {generation} it knows,
        #    {stem} and {seed} come from `fields`; `before` adds the input to the before/after strip.
        stored = await download_video(outcome.generation_id, credentials, output, fields={"stem": video, "seed": seed},
                                      before=video if os.path.isfile(video) else None)
    except BaseException as exc:  # a failure or a cancellation
        # A summary that says why, the `aimlapi.generation.failed` event, and for a paid generation
        # left behind, the command that collects it at no new charge (in the summary and in `exc`).
        await publish_generation(request, video, submitted, outcome, stored, error=exc, started=started,
                                 output=output, credentials=credentials)
        raise
    # The summary artifact, the output link and the `aimlapi.generation.completed` event.
    return await publish_generation(request, video, submitted, outcome, stored, started=started)


if __name__ == "__main__":
    video, prompt, *rest = sys.argv[1:]
    base_url = rest[0] if rest else os.environ.get("AIMLAPI_BASE_URL", "https://api.aimlapi.com")
    key = AimlApiCredentials(api_key=os.environ["AIMLAPI_API_KEY"], base_url=base_url)
    result = asyncio.run(my_restyle(video, prompt, credentials=key))
    print(result.one_line())
