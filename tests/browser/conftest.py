from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from demo.photos import Photo
from tests.web.system import System, running_system

CHROMIUM = Path("/usr/bin/chromium")
# Flags for a quiet, offline, container-friendly headless Chromium (never `playwright install`).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="package")
def system(s3_endpoint: str, photos: list[Photo]) -> Iterator[System]:
    with running_system(photos) as running:
        yield running


@pytest.fixture(scope="package")
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (scripts/system-deps.sh installs it)")
    from playwright.sync_api import sync_playwright

    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()
