"""The AI/ML API itself, in plain Python (no Prefect): what we send (`requests`), what comes back
(`models`, `answers`), the client (`client`, `download`, `usage_log`), where it may reach
(`connection`, `fetch_guard`), and what can go wrong (`errors`, `redact`).

The lowest layer: it imports nothing else of ours. Layers, lowest first: api, media, blocks,
storage, submission, tasks, flows, deployments; each imports only the ones below it.
"""
