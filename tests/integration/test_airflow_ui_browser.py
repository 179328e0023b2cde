"""The operator's path in a real browser: headless Chromium (Debian's /usr/bin/chromium, driven by Playwright's
client; no browser is downloaded) logs in to the Airflow UI, opens the trigger form and finds the typed params with
their descriptions, has an out-of-range value refused, triggers a run, sees the mapped fine-tune tasks named by
target platform, follows the MLflow extra link to the run's page in the MLflow UI and opens the registered model
version (its tags and model card).

Screenshots of every step are kept in var/test-artifacts/ui/ (or $TRANSFER_REC_UI_ARTIFACTS), replaced by each run.
"""

from __future__ import annotations

import os
import re
import urllib.parse

import mlflow
import pytest
from airflow_server import admin_login, wait_for
from browser import ARTIFACTS, Screenshots, chromium_context

# Starts Airflow, the MLflow UI and Chromium (~6-10 min on a busy 2-core machine): `make test-servers`.
pytestmark = [pytest.mark.servers, pytest.mark.browser]

DAG = "/api/v2/dags/transfer_rec"
TARGET = "village"  # the synthetic world's target platform (tests/conftest.py two_platforms)


@pytest.fixture
def chromium(tmp_path):
    with chromium_context(tmp_path / "chromium-profile") as context:
        yield context


def param_field(dialog, name: str):
    """The trigger form's row of one param: its label and its description (the field's helper text)."""
    # a `has` locator is matched inside each candidate, so it starts from the page, not from the dialog
    label = dialog.page.locator('[data-scope="field"][data-part="label"]', has_text=re.compile(rf"^\s*{name}(\s|\*|$)"))
    return dialog.locator('[data-scope="field"][data-part="root"]').filter(has=label)


# `chromium` first: without a browser the test skips before Airflow is started.
def test_operator_triggers_a_run_in_the_ui_and_follows_the_mlflow_link(chromium, airflow_with_mlflow_ui):
    from playwright.sync_api import expect

    api, env = airflow_with_mlflow_ui
    shots = Screenshots(ARTIFACTS)
    wait_for(api, DAG, lambda body: body.get("dag_id") == "transfer_rec", 300, "dag-processor parsed transfer_rec")
    status, body = api.call("PATCH", DAG, {"is_paused": False})
    assert status == 200 and body["is_paused"] is False, body
    params = api.call("GET", f"{DAG}/details")[1]["params"]
    assert {"run_key", "targets", "epochs_finetune", "strategy", "dry_run"} <= set(params), params
    page = chromium.pages[0] if chromium.pages else chromium.new_page()  # the profile's first tab
    with shots.on_failure(chromium):
        # 1. log in: the UI sends a stranger to the simple auth manager's form; the generated admin signs in
        page.goto(api.base + "/")
        page.wait_for_url(re.compile(r"/auth/login"))
        username, password = admin_login(env["home"])
        page.get_by_label("Username").fill(username)
        page.get_by_label("Password").fill(password)
        shots.take(page, "login")
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(lambda url: "/auth/" not in url)
        page.goto(f"{api.base}/dags/transfer_rec")
        expect(page.get_by_role("heading", name="transfer_rec", exact=True)).to_be_visible()
        shots.take(page, "dag")

        # 2. the trigger form shows every param, each with its description, and triggers with the defaults
        page.get_by_test_id("trigger-dag-button").click()
        dialog = page.get_by_role("dialog")
        expect(dialog.get_by_text("Trigger Dag - transfer_rec")).to_be_visible()
        for name, spec in params.items():
            assert spec.get("description"), f"param {name} has no description"
            field = param_field(dialog, name)
            expect(field).to_have_count(1)
            expect(field.locator('[data-part="helper-text"]')).to_have_text(spec["description"])
            expect(field.locator('[data-part="helper-text"]')).to_be_visible()
        submit = dialog.get_by_test_id("trigger-dag-submit")
        expect(submit).to_be_enabled()  # no param needs typing (an empty required one would disable the button)
        shots.take(page, "trigger-form")

        # targets is optional (no required mark); strategy's empty choice reads as the config's, not "null"
        expect(param_field(dialog, "targets").locator('[data-part="required-indicator"]')).to_have_count(0)
        expect(param_field(dialog, "strategy")).to_contain_text("the config's")
        expect(param_field(dialog, "strategy")).not_to_contain_text("null")

        # an out-of-range number is kept as typed and refused at the trigger, naming the param: no run is queued
        runs_before = api.call("GET", f"{DAG}/dagRuns")[1]["total_entries"]
        epochs = param_field(dialog, "epochs_finetune").get_by_role("spinbutton")
        epochs.fill("-3")
        epochs.blur()
        expect(epochs).to_have_value("-3")
        submit.click()
        expect(dialog).to_contain_text(re.compile(r"epochs_finetune.*-3|-3.*minimum"))
        shots.take(page, "trigger-refused")
        assert api.call("GET", f"{DAG}/dagRuns")[1]["total_entries"] == runs_before

        # a run with few fine-tuning epochs, set in the typed field (dry_run toggled on and off again: the switch
        # works and the run registers a model version, whose page is checked below)
        field = param_field(dialog, "dry_run")
        switch = field.locator('[data-scope="switch"][data-part="root"]')
        switch.click()
        expect(field.locator('input[type="checkbox"]')).to_be_checked()
        switch.click()
        expect(field.locator('input[type="checkbox"]')).not_to_be_checked()
        param_field(dialog, "epochs_finetune").get_by_role("spinbutton").fill("2")
        dialog.get_by_role("button", name="Advanced Options").click()
        expect(dialog).to_contain_text(re.compile(r'"dry_run":\s*false'))
        expect(dialog).to_contain_text(re.compile(r'"epochs_finetune":\s*2'))
        shots.take(page, "trigger-run")
        submit.click()

        # 3. the UI opens the new run; it runs to success with the params as typed
        page.wait_for_url(re.compile(r"/dags/transfer_rec/runs/[^/]+$"))
        run_id = urllib.parse.unquote(page.url.rsplit("/runs/", 1)[1])
        run = f"{DAG}/dagRuns/{urllib.parse.quote(run_id, safe='')}"
        conf = api.call("GET", run)[1]["conf"]
        assert conf["dry_run"] is False and conf["epochs_finetune"] == 2, conf
        final = wait_for(api, run, lambda b: b["state"] in ("success", "failed"), 1200, f"run {run_id} finished")
        assert final["state"] == "success", env["log"].read_text()[-3000:]
        page.reload()
        header = page.locator("h2", has_text=run_id).locator("xpath=..")
        expect(header).to_contain_text("Success")
        shots.take(page, "run-success")

        # 4. a target's tasks form one group in the grid; opened, the fine-tune cell of this run lists the mapped
        # instances, named by target platform
        page.get_by_test_id("task-per_target").get_by_label("Toggle group").click()
        page.get_by_test_id(f"grid-{run_id}-finetune").click()
        page.wait_for_url(re.compile(r"/tasks/finetune/mapped$"))
        rows = page.get_by_role("row").filter(has=page.get_by_role("link", name=TARGET, exact=True))
        expect(rows).to_have_count(1)
        expect(rows).to_contain_text("Success")
        shots.take(page, "finetune-mapped")

        # 5. the village instance's details carry the MLflow extra link, to the MLflow UI the fixture serves
        rows.get_by_role("link", name=TARGET, exact=True).click()
        page.wait_for_url(re.compile(r"/tasks/finetune/mapped/0$"))
        expect(page.get_by_role("heading", name=f"finetune [{TARGET}]")).to_be_visible()
        page.get_by_role("link", name="Details", exact=True).click()
        link = page.get_by_role("link", name="MLflow run", exact=True)
        expect(link).to_have_attribute("href", re.compile("^" + re.escape(env["mlflow_ui"] + "/#/experiments/")))
        shots.take(page, "finetune-extra-links")

        # 6. following it opens the fine-tune's MLflow run page
        mlflow_run_id = link.get_attribute("href").rsplit("/runs/", 1)[1].split("?")[0]
        client = mlflow.MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
        mlflow_run = client.get_run(mlflow_run_id)
        assert mlflow_run.data.tags["transfer_rec.stage"] == f"finetune {TARGET}"
        with chromium.expect_page() as opened:
            link.click()
        mlflow_page = opened.value
        mlflow_page.wait_for_load_state("load")
        expect(mlflow_page).to_have_url(
            re.compile(
                "^"
                + re.escape(env["mlflow_ui"] + f"/#/experiments/{mlflow_run.info.experiment_id}/runs/{mlflow_run_id}")
            )
        )
        expect(mlflow_page.get_by_role("heading", name=mlflow_run.info.run_name, exact=True)).to_be_visible()
        expect(mlflow_page.get_by_text(mlflow_run_id, exact=True).first).to_be_visible()
        # the model-training view (not the GenAI one, whose side bar lists Judges), metrics named for people
        expect(mlflow_page.get_by_text("Judges", exact=True)).to_have_count(0)
        expect(mlflow_page.get_by_text("ndcg_at_10.candidate", exact=True).first).to_be_visible()
        shots.take(mlflow_page, "mlflow-run")

        # 7. the registered model version: a few readable tags, and a model card whose tables read as tables
        version = client.get_model_version(f"transfer_rec-{TARGET}", "1")
        assert version.run_id == mlflow_run_id
        mlflow_page.goto(f"{env['mlflow_ui']}/#/models/transfer_rec-{TARGET}/versions/1?workflowType=machine_learning")
        expect(mlflow_page.get_by_role("heading", name="Version 1", exact=True)).to_be_visible()
        expect(mlflow_page.get_by_text("Accuracy and retention")).to_be_visible()
        description = mlflow_page.get_by_text("transfer-rec model for target platform").locator("xpath=../..")
        tables = description.locator("table", has_text="candidate")
        expect(tables.first).to_be_visible()
        assert tables.count() >= 3, "accuracy, beyond accuracy, segments"
        for n in range(tables.count()):
            layout = tables.nth(n).evaluate(TABLE_LAYOUT)
            assert layout["gap"] != float("inf"), f"table {n}: no row with two cells to measure"
            assert layout["gap"] >= 6, f"table {n}: adjacent cells' text {layout['gap']:.1f} px apart"
            assert layout["tallest"] < 1.8 * layout["line"], f"table {n}: a cell wraps ({layout})"
        assert not re.search(r"\b[0-9a-f]{64}\b", description.inner_text()), "full sha256s belong in provenance.json"
        tags = mlflow_page.get_by_test_id("editable-table").locator("tbody tr:not([aria-hidden])")
        expect(tags.first).to_be_visible()
        assert 5 <= len(version.tags) <= 15 and tags.count() == len(version.tags), (tags.count(), version.tags)
        shots.take(mlflow_page, "mlflow-model-version", full_page=True)


# The narrowest gap between the text of two adjacent cells, the tallest cell and a line's height, in px.
TABLE_LAYOUT = """table => {
  const textRect = cell => {
    const range = document.createRange();
    range.selectNodeContents(cell);
    const text = cell.textContent.replace(/\\s+$/u, "");
    const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
    let node, seen = 0, last = null;
    while ((node = walker.nextNode())) {
      if (seen + node.length >= text.length) { last = node; break; }
      seen += node.length;
    }
    if (last) range.setEnd(last, text.length - seen);
    return range.getBoundingClientRect();
  };
  let gap = Infinity, tallest = 0;
  for (const row of table.querySelectorAll("tr")) {
    const cells = [...row.children];
    cells.forEach(c => { tallest = Math.max(tallest, c.getBoundingClientRect().height); });
    for (let i = 0; i + 1 < cells.length; i++) {
      gap = Math.min(gap, textRect(cells[i + 1]).left - textRect(cells[i]).right);
    }
  }
  return {gap, tallest, line: parseFloat(getComputedStyle(table).lineHeight) || 20};
}"""
