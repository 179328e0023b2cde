"""Data Docs as an operator opens them from Airflow, offline: the plugin's web app (as the API server mounts it)
serves a batch's Data Docs to headless Chromium, and every request that would leave the machine is refused. The
index lists every validation with its status icon drawn, and a batch that passed with warnings reads "Succeeded",
its warnings marked as such. Screenshots in var/test-artifacts/ui/data-docs/."""

from __future__ import annotations

import threading
import time

import pytest
import uvicorn
from browser import ARTIFACTS, Screenshots, chromium_context
from ports import free_port_pair

from transfer_rec.config import load_config
from transfer_rec.io.state import StateLayout
from transfer_rec.ops import links
from transfer_rec.stages.pull import pull_platform
from transfer_rec.stages.validate import validate_batch

# Chromium only (no Airflow, no MLflow): runs in `make test` where Chromium is installed, and skips without it.
pytestmark = pytest.mark.browser

ICON_FONT = '900 16px "Font Awesome 6 Free"'


def wait_drawn(page, selector: str, count: int) -> None:
    """Wait until `count` elements match and each is drawn wider than 5 px. Asked inside the page in one go:
    bootstrap-table redraws its rows after load, so a handle taken before that redraw measures a detached node."""
    page.wait_for_function(
        """([selector, count]) => {
            const found = [...document.querySelectorAll(selector)];
            return found.length === count && found.every(e => e.getBoundingClientRect().width > 5);
        }""",
        arg=[selector, count],
    )


@pytest.fixture
def plugin_server():
    """The plugin's FastAPI app under uvicorn on a free loopback port, mounted at the plugin's prefix."""
    from airflow import plugins_manager
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi import FastAPI

    app = next(a for a in plugins_manager.get_fastapi_plugins()[0] if a["url_prefix"] == links.PLUGIN_PREFIX)
    # alone, without Airflow's auth manager: the sign-in the API server asks for (test_airflow_rest) stands granted
    app["app"].dependency_overrides[get_user] = lambda: "a signed-in user"
    host = FastAPI()
    host.mount(app["url_prefix"], app["app"])
    port = free_port_pair()
    server = uvicorn.Server(uvicorn.Config(host, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the plugin's app did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        app["app"].dependency_overrides.pop(get_user, None)


def test_data_docs_offline_list_every_validation_and_agree_with_the_pipeline(pipeline_env, plugin_server, tmp_path):
    pipeline_env(faults=["duplicate_items"])
    config, layout = load_config(), StateLayout.from_env()
    village = config.platform("village")
    validated = validate_batch(pull_platform(village, layout, "warned"), village, layout)
    assert validated.validation.success and len(validated.validation.warnings) == 1
    files = len(validated.files)

    from playwright.sync_api import expect

    shots = Screenshots(ARTIFACTS / "data-docs")
    remote: list[str] = []
    with chromium_context(tmp_path / "profile") as chromium, shots.on_failure(chromium):
        page = chromium.new_page()

        def offline(route):
            if route.request.url.startswith(plugin_server + "/"):
                route.continue_()
            else:
                remote.append(route.request.url)
                route.abort()

        chromium.route("**/*", offline)
        page.goto(links.data_docs_url(links.data_docs_page("village", "warned"), plugin_server))

        # the index: one row per validated file (drawn by bootstrap-table), each with a visible success icon
        table = page.locator("#section-1-content-block-2-1-body-table")
        rows = table.locator("tbody tr")
        expect(rows).to_have_count(files)
        icons = table.locator("tbody i.fa-check-circle")
        expect(icons).to_have_count(files)
        page.wait_for_function(f"document.fonts.check('{ICON_FONT}')")
        wait_drawn(page, "#section-1-content-block-2-1-body-table tbody i.fa-check-circle", files)
        expect(page.get_by_role("button", name="Clear Filters").locator("visible=true")).to_have_count(1)
        shots.take(page, "index")

        # the items file's validation: passed, its failed warning-severity expectation marked as a warning
        table.locator("tbody tr", has_text="items").click()
        page.wait_for_url("**/validations/**items*.html")
        expect(page.get_by_text("Status:").locator("..")).to_contain_text("Succeeded")
        warning = page.locator("i.fa-exclamation-triangle")
        expect(warning).to_have_count(1)
        expect(warning).to_be_visible()
        expect(page.locator("i.fa-times")).to_have_count(0)
        header = page.locator("th", has_text="Unexpected Value")
        expect(header).to_be_visible()  # its header cells padded apart ("Unexpected Value" | "Count")
        assert (
            header.evaluate("th => parseFloat(getComputedStyle(th.querySelector('.th-inner') || th).paddingRight)") > 4
        )
        page.wait_for_function(f"document.fonts.check('{ICON_FONT}')")
        wait_drawn(page, "i.fa-exclamation-triangle", 1)
        shots.take(page, "validation-warned", full_page=True)
    assert remote == [], "the pages asked the network for these"
