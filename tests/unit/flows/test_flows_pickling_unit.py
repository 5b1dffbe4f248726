"""Every flow can be pickled as Prefect pickles it to start a served flow run in a subprocess.

`flow.serve` (and the runner behind `prefect worker`-less deployments) sends the flow to its child
process with cloudpickle. The functions under our flows and tasks are pickled by value, with every
global they name, so one unpicklable global (a ContextVar, a lock, an open client) makes each run of
a served deployment crash before it starts.
"""

from __future__ import annotations

import cloudpickle
import pytest

from prefect_aimlapi_video.flows.batch import video_to_video_batch
from prefect_aimlapi_video.flows.collect import collect_generation
from prefect_aimlapi_video.flows.folder import video_to_video_folder
from prefect_aimlapi_video.flows.video_to_video import video_to_video


@pytest.mark.parametrize("flow", [video_to_video, video_to_video_batch, video_to_video_folder, collect_generation],
                         ids=lambda flow: flow.name)
def test_the_flow_round_trips_through_cloudpickle(flow) -> None:
    again = cloudpickle.loads(cloudpickle.dumps(flow))
    assert again.name == flow.name
    assert again.fn.__name__ == flow.fn.__name__
