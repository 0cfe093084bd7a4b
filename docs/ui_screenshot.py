"""Screenshots of a running MLflow UI for the README (driven by docs/ui_screenshot.sh).

    python docs/ui_screenshot.py URL EXPERIMENT_ID MODEL_NAME LOGGED_MODEL_ID OUT_DIR

Needs ``playwright`` (PyPI) and Debian's ``/usr/bin/chromium``; nothing is downloaded. The runs table gets
the headline metric columns through the UI's own saved view state (localStorage), as a reviewer would pick
them in "Columns".
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

COLUMNS = ["auroc", "auroc_ci_low", "auroc_ci_high", "sensitivity", "specificity", "best_val_auroc", "train_minutes"]
FILTER = "tags.`medvit.stage` = 'pipeline'"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def view_state() -> str:
    """The experiment page's saved state: filter on the parents, sort by AUROC, show the headline metrics."""
    return json.dumps({
        "searchFilter": FILTER, "orderByKey": "metrics.`auroc`", "orderByAsc": False, "startTime": "ALL",
        "lifecycleFilter": "Active", "datasetsFilter": [], "modelVersionFilter": "All Runs",
        "selectedColumns": ["attributes.`Models`", *(f"metrics.`{m}`" for m in COLUMNS), "tags.`model.arch`"],
    })


def main(url: str, experiment: str, model: str, logged_model: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1680, "height": 820})
        page.goto(f"{url}/#/experiments/{experiment}/runs?workflowType=machine_learning")
        saved = {f'MLflowLocalStorage-1.1-ExperimentPage-["{experiment}"]-ReactComponentState': view_state(),
                 "mlflow.assistant.panelOpen_v1": "false",  # the assistant panel would take a third of the width
                 "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true"}
        page.evaluate("saved => Object.entries(saved).forEach(([k, v]) => localStorage.setItem(k, v))", saved)
        page.reload()
        page.wait_for_selector("text=best_val_auroc", timeout=30000)
        page.wait_for_timeout(2000)
        page.screenshot(path=str(out / "mlflow_runs.png"))
        page.goto(f"{url}/#/models/{model}/versions/1?workflowType=machine_learning")
        page.wait_for_selector("text=Model card", timeout=30000)
        page.wait_for_timeout(2000)
        page.screenshot(path=str(out / "mlflow_model_version.png"))
        page.goto(f"{url}/#/experiments/{experiment}/models/{logged_model}?workflowType=machine_learning")
        page.wait_for_selector("text=Datasets used", timeout=30000)
        page.wait_for_timeout(2000)
        page.screenshot(path=str(out / "mlflow_logged_model.png"))
        browser.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], Path(sys.argv[5]))
