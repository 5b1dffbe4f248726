"""Prefect flows and tasks for the AI/ML API model `krea/krea-wan-14b/video-to-video`.

Import the public names from `prefect_aimlapi_video` itself, or each from its module here
(`.video_to_video`, `.batch`, `.folder`, `.tasks`, `.client`, `.models`, `.errors`). This package
file stays empty so that importing the client (as the block does) never drags in Prefect flows.
"""
