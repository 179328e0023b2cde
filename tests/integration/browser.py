"""Headless Chromium for the browser tests: Debian's /usr/bin/chromium (or $TRANSFER_REC_CHROMIUM) driven by
Playwright's Python client, which never downloads a browser here; numbered screenshots kept as test artifacts in
var/test-artifacts/ui/ (or $TRANSFER_REC_UI_ARTIFACTS)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("TRANSFER_REC_CHROMIUM") or "/usr/bin/chromium")  # Debian's package
# Headless, and quiet on a machine without a network: no background, update, sync or QUIC traffic.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(os.environ.get("TRANSFER_REC_UI_ARTIFACTS") or REPO / "var" / "test-artifacts" / "ui")
TIMEOUT_MS = 90_000  # a page or element on a busy 2-core machine


class Screenshots:
    """Numbered screenshots of the steps, in a folder of ARTIFACTS (the previous run's are removed first)."""

    def __init__(self, folder: Path):
        self.folder, self.count = folder, 0
        folder.mkdir(parents=True, exist_ok=True)
        for old in [*folder.glob("*.png"), *folder.glob("failure-*.html")]:
            old.unlink()
        print(f"\nscreenshots: {folder}")

    def take(self, page, name: str, full_page: bool = False) -> Path:
        self.count += 1
        path = self.folder / f"{self.count:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=full_page)
        return path

    @contextlib.contextmanager
    def on_failure(self, context):
        """On a failing step, keep every open page as a screenshot and its HTML (failure-N.png/.html)."""
        try:
            yield
        except BaseException:
            for n, page in enumerate(context.pages):
                try:
                    page.screenshot(path=str(self.folder / f"failure-{n}.png"))
                    (self.folder / f"failure-{n}.html").write_text(page.content())
                except Exception as error:  # the page may be gone; the original failure matters
                    print(f"no failure capture of {page.url}: {error}")
            raise


@contextlib.contextmanager
def chromium_context(profile: Path) -> Iterator:
    """A headless Chromium with a fresh profile (a Playwright browser context); skips when Chromium is missing."""
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium chromium-driver")
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1600},
        )
        context.set_default_timeout(TIMEOUT_MS)
        try:
            yield context
        finally:
            context.close()
