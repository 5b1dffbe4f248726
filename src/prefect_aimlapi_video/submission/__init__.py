"""Paying once: the exactly-once protocol (`protocol`) over its record (`record`) and the claim on
it (`lease`), what the usage log teaches about this account (`log_visibility`), spend caps and
estimates (`budget`, `estimate`), and waiting for a generation (`waiting`, `polling`,
`learned_polling`). No Prefect here; imports the layers below.
"""
