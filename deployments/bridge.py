"""The storage-event bridge: S3 "object created" notifications on an SQS queue -> Prefect events.

Prefect's open-source server has events and deployment triggers but nothing that listens to S3,
so this long-polls SQS and emits one `aimlapi.s3.object.created` event per new object; a
deployment trigger on that event starts a `video_to_video` run. It accepts notifications sent
directly by S3, through SNS (plain or raw delivery) and through EventBridge.

This module is the command, `aimlapi-video s3-events` (also `python -m` this module): its
arguments, the AWS clients, logging, the startup checks and the signal handling around the loop.
The pieces it puts together live beside it: `receive_loop` (`S3EventBridge`: receive, emit,
delete; its docstring has the delivery guarantees and what counts as poison), `s3_messages`
(reading notifications, `Filters`, `build_event`), `seen_store` (de-duplication that survives
restarts) and `event_emitter` (`POST /api/events`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from prefect_aimlapi_video.deployments.event_emitter import PrefectEventEmitter
from prefect_aimlapi_video.deployments.receive_loop import COUNTS, S3EventBridge
from prefect_aimlapi_video.deployments.s3_messages import (
    EVENT_NAME,
    Filters,
    MalformedMessage,
    ObjectCreated,
    build_event,
    parse_message,
)
from prefect_aimlapi_video.deployments.seen_store import SeenStore, default_state_file
from prefect_aimlapi_video.storage.sources import VIDEO_SUFFIXES

__all__ = ["EVENT_NAME", "Filters", "MalformedMessage", "ObjectCreated", "PrefectEventEmitter", "S3EventBridge",
           "SeenStore", "build_event", "main", "parse_message"]

logger = logging.getLogger("aimlapi.bridge")  # the receive loop's logger: one name for the whole bridge


def _max_messages(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 10:
        raise argparse.ArgumentTypeError("must be between 1 and 10 (an SQS limit)")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aimlapi-video s3-events",
        description="Turn S3 'object created' notifications on an SQS queue into Prefect events "
                    f"({EVENT_NAME}) that deployment triggers can start video_to_video runs from.",
    )
    parser.add_argument("--queue-url", required=True, help="the SQS queue S3 (or SNS, EventBridge) notifies")
    parser.add_argument("--bucket", default=None, help="only objects in this bucket")
    parser.add_argument("--prefix", default="", help="only keys starting with this")
    parser.add_argument("--suffix", action="append", dest="suffixes", default=None,
                        help=f"key suffix, case-insensitive, repeatable (default: {' '.join(VIDEO_SUFFIXES)})")
    parser.add_argument("--exclude-prefix", action="append", dest="exclude_prefixes", default=[],
                        help="keys under this never start a run (e.g. where outputs are written); repeatable")
    parser.add_argument("--wait-seconds", type=int, default=1, choices=range(21), metavar="0-20",
                        help="SQS long-poll wait; a message ends the wait early")
    parser.add_argument("--visibility-timeout", type=int, default=30,
                        help="seconds a received message stays hidden before it is redelivered")
    parser.add_argument("--max-messages", type=_max_messages, default=10, help="messages per receive, 1-10")
    parser.add_argument("--aws-credentials", default=None,
                        help="prefect-aws AwsCredentials block name (default: boto3's credential chain)")
    parser.add_argument("--state-file", type=Path, default=None,
                        help="SQLite file of emitted objects (default: $PREFECT_HOME/aimlapi/s3-bridge.sqlite)")
    parser.add_argument("--dedupe-days", type=float, default=7.0, help="how long an emitted object is remembered")
    return parser


def _configure_logging() -> None:
    """INFO lines through Prefect's console logging (or straight to stderr if a custom config has none)."""
    from prefect.logging.configuration import ensure_logging_setup

    ensure_logging_setup()
    logger.setLevel(logging.INFO)
    if not logger.hasHandlers():
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)


async def _aws_clients(block_name: str | None) -> tuple[Any, Any]:
    from prefect_aws import AwsCredentials

    credentials = await AwsCredentials.aload(block_name) if block_name else AwsCredentials()
    return credentials.get_client("sqs"), credentials.get_s3_client()


async def _serve(args: argparse.Namespace) -> int:
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        print("error: set PREFECT_API_URL to your Prefect server's API; events sent to a temporary server "
              "would be lost.", file=sys.stderr)
        return 2
    try:
        sqs, s3 = await _aws_clients(args.aws_credentials)
        attributes = (await asyncio.to_thread(
            sqs.get_queue_attributes, QueueUrl=args.queue_url, AttributeNames=["RedrivePolicy"]
        )).get("Attributes", {})
    except (BotoCoreError, ClientError, ValueError) as error:
        print(f"error: cannot use the queue {args.queue_url}: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    if "RedrivePolicy" not in attributes:
        logger.warning("the queue has no dead-letter queue (RedrivePolicy): a malformed message will come back forever")
    filters = Filters(args.prefix, tuple(args.suffixes or VIDEO_SUFFIXES), tuple(args.exclude_prefixes), args.bucket)
    if not filters.prefix and not filters.exclude_prefixes:
        logger.warning("watching whole buckets without --exclude-prefix: outputs written there would start new runs")
    store = SeenStore(args.state_file or default_state_file(), args.dedupe_days)
    bridge = S3EventBridge(
        args.queue_url, sqs, s3, filters, store, args.wait_seconds,
        visibility_timeout=args.visibility_timeout, max_messages=args.max_messages,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    logger.info("listening on %s for %s", args.queue_url, filters)
    try:
        totals = await bridge.run(stop)
    finally:
        store.close()
    print("s3-events stopped: " + " ".join(f"{name}={totals[name]}" for name in COUNTS))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`aimlapi-video s3-events ...`: runs until SIGINT/SIGTERM, then exits 0 with a one-line summary."""
    args = build_parser().parse_args(argv)
    _configure_logging()
    return asyncio.run(_serve(args))


if __name__ == "__main__":
    sys.exit(main())
