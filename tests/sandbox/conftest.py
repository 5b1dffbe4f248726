"""Fixtures for the sandbox's own tests: real servers on loopback, tiny real clips, schema validators."""

from __future__ import annotations

import base64
import contextlib
import copy
import functools
import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from prefect_aimlapi_video.sandbox import SandboxConfig, SandboxHandle, make_test_clip, run_sandbox

MODEL = "krea/krea-wan-14b/video-to-video"
SCHEMA_DIR = Path(__file__).parent / "schemas"
PENDING = ("queued", "generating")


def openapi_to_json_schema(node: Any) -> Any:
    """OpenAPI 3.0 ``nullable: true`` is not JSON Schema: turn it into ``anyOf [..., null]``."""
    if isinstance(node, list):
        return [openapi_to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: openapi_to_json_schema(value) for key, value in node.items() if key != "nullable"}
    return {"anyOf": [converted, {"type": "null"}]} if node.get("nullable") else converted


def response_validator(filename: str, method: str) -> jsonschema.protocols.Validator:
    document = json.loads((SCHEMA_DIR / filename).read_text())
    schema = document["paths"]["/v2/video/generations"][method]["responses"]["200"]["content"]["application/json"][
        "schema"
    ]
    if "$ref" in schema:
        schema = functools.reduce(lambda node, key: node[key], schema["$ref"].removeprefix("#/").split("/"), document)
    schema = openapi_to_json_schema(copy.deepcopy(schema))
    validator_class = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    validator_class.check_schema(schema)
    return validator_class(schema)


@pytest.fixture(scope="session")
def schema_dir() -> Path:
    return SCHEMA_DIR


@pytest.fixture(scope="session")
def post_schema() -> jsonschema.protocols.Validator:
    return response_validator("openapi-post-video-generations.json", "post")


@pytest.fixture(scope="session")
def get_schema() -> jsonschema.protocols.Validator:
    return response_validator("openapi-get-video-generations.json", "get")


def data_uri(data: bytes, media_type: str = "video/mp4") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


@pytest.fixture(scope="session")
def to_data_uri() -> Callable[..., str]:
    return data_uri


@pytest.fixture(scope="session")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """160x96, 1 s at 24 fps: 24 frames of real H.264."""
    return make_test_clip(tmp_path_factory.mktemp("clips") / "clip.mp4", width=160, height=96, seconds=1.0, fps=24)


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64x48, 6 frames: for tests that need many generations."""
    return make_test_clip(tmp_path_factory.mktemp("clips") / "tiny.mp4", width=64, height=48, seconds=0.25, fps=24)


@pytest.fixture(scope="session")
def clip_uri(clip: Path) -> str:
    return data_uri(clip.read_bytes())


@pytest.fixture(scope="session")
def tiny_uri(tiny_clip: Path) -> str:
    return data_uri(tiny_clip.read_bytes())


@pytest.fixture(scope="session")
def static_server(clip: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A plain HTTP file server on loopback holding ``clip.mp4`` and ``notes.txt`` (like a presigned S3 URL)."""
    root = tmp_path_factory.mktemp("static")
    (root / "clip.mp4").write_bytes(clip.read_bytes())
    (root / "notes.txt").write_text("not a video")

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class Api:
    """A bare client of the provider's contract, the way the provider's own sample uses it."""

    def __init__(self, handle: SandboxHandle) -> None:
        self.handle = handle
        self.http = httpx.Client(
            base_url=handle.base_url, headers={"Authorization": f"Bearer {handle.api_key}"}, timeout=30
        )

    def submit(self, video_url: str, headers: dict[str, str] | None = None, **fields: Any) -> httpx.Response:
        body = {
            "model": MODEL,
            "prompt": "a watercolour fox",
            "video_url": video_url,
            "strength": 0.55,
            "seed": 7,
            **fields,
        }
        return self.http.post("/v2/video/generations", json=body, headers=headers)

    def poll(self, generation_id: str) -> httpx.Response:
        return self.http.get("/v2/video/generations", params={"generation_id": generation_id})

    def wait(self, generation_id: str, timeout: float = 30) -> dict[str, Any]:
        """Poll until ``completed`` or ``error`` (an unknown status word means "not yet")."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = self.poll(generation_id).raise_for_status().json()
            if body["status"] in ("completed", "error"):
                return body
            time.sleep(0.03)
        raise TimeoutError(f"{generation_id} did not finish in {timeout} s")

    def generate(self, video_url: str, **fields: Any) -> tuple[dict[str, Any], bytes]:
        """Submit, wait for completion, download the result."""
        response = self.submit(video_url, **fields)
        assert response.status_code == 200, response.text
        final = self.wait(response.json()["id"])
        assert final["status"] == "completed", final
        return final, httpx.get(final["video"]["url"], timeout=30).raise_for_status().content


@pytest.fixture(scope="session")
def sandbox_handle() -> Iterator[SandboxHandle]:
    """One sandbox for most tests; ``api`` resets it before each test."""
    with run_sandbox(SandboxConfig(processing_seconds=0.05, workers=8)) as handle:
        yield handle


@pytest.fixture
def api(sandbox_handle: SandboxHandle) -> Iterator[Api]:
    sandbox_handle.reset()
    client = Api(sandbox_handle)
    yield client
    client.http.close()


@pytest.fixture
def make_api() -> Iterator[Callable[..., Api]]:
    """Start a dedicated sandbox with the given config fields (stopped after the test)."""
    with contextlib.ExitStack() as stack:

        def start(**config: Any) -> Api:
            client = Api(stack.enter_context(run_sandbox(SandboxConfig(**config))))
            stack.callback(client.http.close)
            return client

        yield start
