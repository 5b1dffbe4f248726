"""Video files as PyAV sees them, no network of their own and no Prefect: what a video holds
(`probe`), what we accept before paying (`video_checks`, `limits`), and the before/after strip
(`strip`, made in a helper process by `strip_helper`). Imports only `api`.
"""
