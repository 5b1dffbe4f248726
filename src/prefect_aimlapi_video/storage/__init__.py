"""Where bytes and records live: S3 (`s3`), the exactly-once record stores (`record_store`), where
an input comes from (`sources`) and a result goes (`destinations`, `delivery`), and what the upload
trigger and the sweep agree an object means (`s3_requests`). Imports `api`, `media` and `blocks`.
"""
