"""The flows (`video_to_video`, `batch`, `folder`, `collect`) and what only flows use: their shared
settings, the request they build, the summary and events of a run, a batch's items, report and fan-out.

Import the public names from `prefect_aimlapi_video` itself, or each flow from its module here. This
package file stays empty so that importing one flow never drags in the others.
"""
