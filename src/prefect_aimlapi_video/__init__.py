"""Prefect 3 flows, tasks and blocks for the AI/ML API video-to-video model `krea/krea-wan-14b/video-to-video`.

This is the one import package of the `prefect-aimlapi-video` distribution, so a Prefect project
with its own `flows` or `blocks` packages never collides with ours. Its layers, each a folder,
import only the layers before them: `api` (the HTTP client, its answers and errors), `media`
(probing, strips), `blocks`, `storage` (S3, sources, destinations, record stores), `submission`
(exactly-once, budget, polling), `tasks`, `flows`, `deployments` (CLI, serve, the S3 bridge).
`blocks/`, `flows/`, `deployments/` and `sandbox/` are the repository's top-level folders,
mapped in by setuptools' `package-dir`; the others live under `src/prefect_aimlapi_video/`.

Everything in `__all__` can be imported from here. The block is imported eagerly, because Prefect
loads this package as a collection (`prefect.collections` entry point) whenever it looks up a
block type, and `prefect block register -m prefect_aimlapi_video` finds block classes among this
module's attributes. The flows, tasks and models load on first access: a Prefect process that only
looks up a block does not pay for importing our flows.
"""

from __future__ import annotations

import importlib
from typing import Any

from prefect_aimlapi_video.blocks import AimlApiCredentials

__version__ = "0.2.0"

# name -> module that defines it; resolved on first access (PEP 562).
_LAZY: dict[str, str] = {
    # flows
    "video_to_video": "prefect_aimlapi_video.flows.video_to_video",
    "video_to_video_batch": "prefect_aimlapi_video.flows.batch",
    "video_to_video_folder": "prefect_aimlapi_video.flows.folder",
    "collect_generation": "prefect_aimlapi_video.flows.collect",
    # tasks, for composing your own flows
    "submit_generation": "prefect_aimlapi_video.tasks.steps",
    "wait_for_generation": "prefect_aimlapi_video.tasks.steps",
    "download_video": "prefect_aimlapi_video.tasks.steps",
    # ... and publishing what they returned as video_to_video does (summary, link, events)
    "publish_generation": "prefect_aimlapi_video.flows.publish",
    # what the flows and tasks take and return
    "VideoToVideoResult": "prefect_aimlapi_video.api.models",
    "GenerationParams": "prefect_aimlapi_video.api.requests",
    "KreaWan14bVideoToVideo": "prefect_aimlapi_video.api.requests",
    "PollPolicy": "prefect_aimlapi_video.submission.polling",
    "RunSettings": "prefect_aimlapi_video.flows.settings",
    "InputLimits": "prefect_aimlapi_video.media.limits",
    "BatchItem": "prefect_aimlapi_video.flows.batch_items",
    "BatchItemResult": "prefect_aimlapi_video.flows.batch_items",
    # the plain async client (no Prefect inside)
    "AimlApiClient": "prefect_aimlapi_video.api.client",
    # errors
    "AimlApiError": "prefect_aimlapi_video.api.errors",
    "InvalidInputError": "prefect_aimlapi_video.api.errors",
    "AuthenticationError": "prefect_aimlapi_video.api.errors",
    "OutOfCreditsError": "prefect_aimlapi_video.api.errors",
    "GenerationFailedError": "prefect_aimlapi_video.api.errors",
    "GenerationTimeoutError": "prefect_aimlapi_video.api.errors",
    "SubmissionOutcomeUnknown": "prefect_aimlapi_video.api.errors",
    "UnidentifiedGenerationError": "prefect_aimlapi_video.api.errors",
    "ReconciliationUnavailable": "prefect_aimlapi_video.api.errors",
    "DownloadError": "prefect_aimlapi_video.api.errors",
    "DeliveryFailed": "prefect_aimlapi_video.api.errors",
    "GenerationNotRecorded": "prefect_aimlapi_video.api.errors",
    "ProviderSubmitError": "prefect_aimlapi_video.api.errors",
    "TransientApiError": "prefect_aimlapi_video.api.errors",
    "RateLimitedError": "prefect_aimlapi_video.api.errors",
    "InvalidRequestError": "prefect_aimlapi_video.api.errors",
    "NotFoundError": "prefect_aimlapi_video.api.errors",
    "BudgetExceeded": "prefect_aimlapi_video.api.errors",
    "BatchFailedError": "prefect_aimlapi_video.api.errors",
}

__all__ = ["AimlApiCredentials", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})

