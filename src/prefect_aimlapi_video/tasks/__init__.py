"""The three Prefect tasks of a generation, for composing your own flows: `submit_generation`,
`wait_for_generation`, `download_video` (in `steps`), and the progress artifact they show
(`progress`). They behave the same in any flow: what a batch changes is passed as arguments."""

from prefect_aimlapi_video.tasks.steps import (
    GenerationOutcome,
    StoredVideo,
    SubmittedGeneration,
    download_video,
    submit_generation,
    wait_for_generation,
)

__all__ = ["GenerationOutcome", "StoredVideo", "SubmittedGeneration", "download_video", "submit_generation",
           "wait_for_generation"]
