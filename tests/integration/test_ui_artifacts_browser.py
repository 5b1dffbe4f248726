"""The flow run's Artifacts tab in a real browser: the summary's before/after strip renders as an image.

Headless Chromium (Debian's `chromium` package, which `.ci/run` installs) driven by Playwright,
against the session's Prefect server, which serves its UI. The screenshot is kept under the test's
temporary directory (and copied to AIMLAPI_SCREENSHOT_DIR when set, as for the README's picture).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from prefect_aimlapi_video.flows.video_to_video import video_to_video
from tests.support.reliability import fast_credentials, fast_polls

pytestmark = pytest.mark.integration
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As the machine's own probe starts it: no sandbox as root, and no calls home on a closed network.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


async def test_the_strip_renders_in_the_artifacts_tab(prefect_server, sandbox, clips, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run does)")
    playwright_api = pytest.importorskip("playwright.async_api")

    result = await video_to_video(video=str(clips["odd"]), prompt="ink wash", seed=8,
                                  credentials=fast_credentials(sandbox), output=str(tmp_path / "out.mp4"),
                                  settings={"poll_policy": fast_polls()})
    ui = prefect_server.removesuffix("/api")
    shot = tmp_path / "artifacts-tab.png"
    async with playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1600})
            await page.goto(f"{ui}/runs/flow-run/{result.flow_run_id}", wait_until="networkidle")
            await page.get_by_text("Artifacts", exact=True).first.click()  # the run's Artifacts tab
            await page.get_by_text("aimlapi-video-to-video-summary").first.click()  # its summary, by key
            image = page.locator('img[src^="data:image/jpeg;base64,"]').first
            await image.wait_for(state="visible", timeout=60_000)
            natural = await image.evaluate("img => [img.complete, img.naturalWidth, img.naturalHeight]")
            await page.screenshot(path=str(shot))
        finally:
            await browser.close()
    complete, width, height = natural
    assert complete and width > 100 and height > 50, natural  # decoded and drawn, not a broken image
    assert shot.read_bytes().startswith(b"\x89PNG")
    if os.environ.get("AIMLAPI_SCREENSHOT_DIR"):
        target = Path(os.environ["AIMLAPI_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, target / shot.name)
        shutil.copy(tmp_path / "out.mp4.strip.jpg", target / "strip-example.jpg")
