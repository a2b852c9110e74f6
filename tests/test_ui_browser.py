"""The MLflow UI of a real sweep, in headless Chromium: what a user sees after ``raybrain ui``.

A tiny sweep runs through the real pipeline (local Ray, MLflow SQLite store), then
:class:`raybrain.ui.MlflowServer` (the code behind ``raybrain ui``) serves the store and
selenium asserts on what the pages render: the parent run and its child runs by name, the
nesting (children hidden under the parent until it is expanded; the child's page links its
parent; the parent's page lists its children), and the parent's artifacts ``spec.json`` and
``verdict.csv`` (whose preview shows the verdict's columns). Screenshots of each page go
to ``tests/artifacts/screenshots/``.

Needs Debian's ``chromium`` and ``chromium-driver``: ``make test`` (and so CI) installs them.
"""

from __future__ import annotations

import copy
import csv
import shutil
import time
from pathlib import Path

import pytest

from raybrain.sweep import parse_spec, run_sweep
from raybrain.sweep.tracking import Tracker
from raybrain.ui import MlflowServer
from tests.conftest import ROOT, TINY, WAIT_S

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOTS = ROOT / "tests" / "artifacts" / "screenshots"
SWEEP = "ui-tiny"
CHILD_NAMES = {f"{arm} seed={seed}" for arm in ("brain[alpha=0.1]", "shuffled[alpha=0.1]", "none")
               for seed in (0, 1)}
# flags that work in this sandbox's closed network (no background connections, no GPU)
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1600,1000"]


def _require_chromium() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not found: the browser test needs Debian's "
                    f"chromium and chromium-driver; run `make test`, which installs them "
                    f"(or: apt-get install -y chromium chromium-driver)", pytrace=False)


@pytest.fixture
def browser(tmp_path):
    _require_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROME_FLAGS + [f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    yield driver
    driver.quit()


def _shoot(driver, name: str) -> Path:
    path = SCREENSHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def _close_assistant(driver) -> None:
    """Close MLflow's assistant side panel if it is open (it only narrows the page)."""
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(
            By.CSS_SELECTOR, '[data-component-id="mlflow.assistant.chat_panel.close"]'):
        if button.is_displayed():
            button.click()


def test_mlflow_ui_shows_the_sweep(ray_session, tmp_path, monkeypatch, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    t0 = time.monotonic()
    monkeypatch.chdir(tmp_path)
    d = copy.deepcopy(TINY)
    d.update(name=SWEEP, arms={"include": ["brain", "shuffled", "none"]})
    d["params"]["alpha"] = {"grid": [0.1]}
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = run_sweep(parse_spec(d), tracking_uri=uri, out=lambda line: None)
    t_sweep = time.monotonic() - t0
    eid, pid = result.experiment_id, result.parent_run_id
    tracker = Tracker(uri, "raybrain")
    tracker.parent_id = pid
    children = {c.info.run_name: c.info.run_id for c in tracker.child_runs()}
    assert set(children) == CHILD_NAMES  # the store holds what the page must show
    csv_path = tracker.client.download_artifacts(pid, "verdict.csv", str(tmp_path))
    with open(csv_path, newline="") as f:
        verdict = list(csv.reader(f))
    assert verdict[0][:3] == ["kind", "config", "arm"] and len(verdict) > 2

    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    SCREENSHOTS.mkdir(parents=True)
    print(f"screenshots: {SCREENSHOTS}")
    wait = WebDriverWait(browser, WAIT_S)

    def visible(css):
        return wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, css)))

    def link_to(run_id):
        return f'a[href*="/runs/{run_id}"]'

    with MlflowServer(uri, startup_timeout=WAIT_S) as server:
        t_server = time.monotonic() - t0 - t_sweep
        try:
            # 1. the experiment's runs table: the parent row, its children folded under it
            browser.get(server.experiment_url(eid))
            parent_link = visible(link_to(pid))
            assert parent_link.text == SWEEP
            wait.until(EC.text_to_be_present_in_element(
                (By.TAG_NAME, "body"), f"{1 + len(CHILD_NAMES)} matching runs"))
            _close_assistant(browser)
            assert not any(el.is_displayed() for cid in children.values()
                           for el in browser.find_elements(By.CSS_SELECTOR, link_to(cid))), \
                "child runs are shown before their parent row is expanded"
            _shoot(browser, "1_experiment_collapsed")
            row_cell = parent_link.find_element(
                By.XPATH, "./ancestor::div[contains(@class, 'ag-cell-wrapper')]")
            row_cell.find_element(
                By.CSS_SELECTOR, 'button[data-component-id*="runnamecellrenderer"]').click()
            for cid in children.values():
                visible(link_to(cid))
            shown = {el.text for el in browser.find_elements(By.CSS_SELECTOR, 'a[href*="/runs/"]')
                     if el.is_displayed()}
            assert shown == CHILD_NAMES | {SWEEP}
            _shoot(browser, "2_experiment_expanded")

            # 2. a child run's page names its parent run, with a link to it
            child = "brain[alpha=0.1] seed=0"
            browser.get(server.run_url(eid, children[child]))
            parent_ref = visible('[data-testid="key-value-Parent run"] a')
            assert parent_ref.text == SWEEP
            assert parent_ref.get_attribute("href").endswith(f"/runs/{pid}")
            assert visible('[data-testid="runs-header"]').text == child
            _close_assistant(browser)
            _shoot(browser, "3_child_run")

            # 3. the parent run's page lists its child runs ...
            browser.get(server.run_url(eid, pid))
            for cid in children.values():
                visible(f'[data-testid="key-value-Child runs"] {link_to(cid)}')
            listed = {el.text.rstrip(",").strip() for el in browser.find_elements(
                By.CSS_SELECTOR, '[data-testid="key-value-Child runs"] a')}
            assert listed == CHILD_NAMES
            _close_assistant(browser)
            _shoot(browser, "4_parent_run")

            # ... and its artifacts: spec.json and verdict.csv, whose preview is the verdict
            tab = wait.until(EC.element_to_be_clickable(
                (By.XPATH, "//button[@role='tab'][normalize-space()='Artifacts']")))
            tab.click()
            visible('[data-testid="artifact-tree-node"][artifact-name="spec.json"]')
            visible('[data-testid="artifact-tree-node"][artifact-name="verdict.csv"]').click()
            # the preview is a table of the CSV (columns scroll sideways: check the first ones)
            wait.until(EC.text_to_be_present_in_element(
                (By.TAG_NAME, "body"), f"Previewing the first {len(verdict) - 1} rows"))
            text = browser.find_element(By.TAG_NAME, "body").text
            header_at = [text.find(f"\n{col}\n") for col in verdict[0][:3]]
            assert -1 not in header_at and header_at == sorted(header_at), (verdict[0][:3], text)
            # every row, in order (a row renders as its non-empty cells joined by spaces)
            lines = iter(text[header_at[-1]:].splitlines())
            for row in verdict[1:]:
                start = " ".join(c for c in row[:3] if c) + " "
                assert any(line.startswith(start) for line in lines), (start, text)
            _shoot(browser, "5_parent_artifacts_verdict")

            # the sweep's report page, as a user opens it from disk
            report = tmp_path / "raybrain_report" / SWEEP / "index.html"
            browser.get(report.as_uri())
            wait.until(EC.text_to_be_present_in_element((By.TAG_NAME, "h1"), SWEEP))
            page = browser.find_element(By.TAG_NAME, "body").text
            assert all(name in page for name in CHILD_NAMES), page
            assert "config alpha=0.1" in page and "brain vs noise: cannot be made" in page
            images = browser.find_elements(By.TAG_NAME, "img")
            assert len(images) >= 5
            loaded = browser.execute_script(
                "return Array.from(document.images).map(i => i.complete && i.naturalWidth)")
            assert all(w and w > 100 for w in loaded), loaded  # every figure decoded
            _shoot(browser, "6_report")
        except Exception:
            _shoot(browser, "failure")
            print(f"page at failure: {browser.current_url}; server log: {server.log_tail()}")
            raise
    t_total = time.monotonic() - t0
    print(f"sweep {t_sweep:.1f} s, server start {t_server:.1f} s, total {t_total:.1f} s")
