"""Data Docs read offline and say what the pipeline decided: every script, style, font and image a page loads is a
local file, the index lists every validation, and a batch that passes with warnings is "Succeeded" with its
warnings marked as such (a failed batch stays "Failed")."""

import re
from pathlib import Path

import pytest

from transfer_rec.config import load_config
from transfer_rec.io.state import StateLayout
from transfer_rec.ops.data_docs import ASSETS_DIR, WARNING_ICON, remote_assets
from transfer_rec.stages.pull import pull_platform
from transfer_rec.stages.validate import DataValidationError, validate_batch

LOADED = re.compile(r"""<(?:script|link|img)\b[^>]*?\b(?:src|href)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
FONT = re.compile(r"url\(([^)]+\.woff2)\)")


def validate(faults: list[str], pipeline_env, batch: str):
    pipeline_env(faults=faults)
    config, layout = load_config(), StateLayout.from_env()
    village = config.platform("village")
    return validate_batch(pull_platform(village, layout, batch), village, layout), layout


def statuses(index: Path) -> list[str]:
    return re.findall(r"'_validation_success_text': '(\w+)'", index.read_text())


def test_pages_load_only_local_files_and_a_warned_batch_reads_as_passed(pipeline_env):
    validated, layout = validate(["duplicate_items"], pipeline_env, "warned")
    assert validated.validation.success and validated.validation.warnings
    site = layout.data_docs / "village" / "warned"
    pages = sorted(site.rglob("*.html"))
    assert len(pages) >= 7  # the index, three validations, three suites
    for page in pages:
        html = page.read_text()
        assert remote_assets(html) == [], page
        for address in LOADED.findall(html):
            assert (page.parent / address.split("?", 1)[0]).resolve().is_file(), f"{page}: {address} is missing"
    # the icon font the status icons use is in the copy too
    css = next((layout.data_docs / ASSETS_DIR).rglob("all.min.css"))
    fonts = FONT.findall(css.read_text())
    assert any("solid" in f for f in fonts)
    assert all((css.parent / f).resolve().is_file() for f in fonts if "solid" in f or "regular" in f)

    # one index row per validated file, each passed, as the pipeline said
    assert statuses(site / "index.html") == ["Success"] * 3
    items_page = next(site.rglob("validations/**/*items*.html"))
    html = items_page.read_text()
    assert "Succeeded" in html and WARNING_ICON in html and "fa-times text-danger" not in html


def test_a_refused_batch_reads_as_failed(pipeline_env):
    pipeline_env()
    with pytest.raises(DataValidationError):
        validate(["out_of_range"], pipeline_env, "bad")
    site = StateLayout.from_env().data_docs / "village" / "bad"
    assert sorted(statuses(site / "index.html")) == ["Failed", "Success", "Success"]
    page = next(site.rglob("validations/**/*interactions*.html"))
    html = page.read_text()
    assert "fa-times text-danger" in html and WARNING_ICON not in html
