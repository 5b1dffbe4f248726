"""Prefect flows and tasks for the AI/ML API model `krea/krea-wan-14b/video-to-video`.

Import what you need from its module: `flows.video_to_video.video_to_video`, the tasks in
`flows.tasks`, the plain async client in `flows.client`. This package file stays empty so that
importing the client (as `blocks` does) never drags in Prefect flows.
"""
