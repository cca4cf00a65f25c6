"""`hpo dashboard` in a real browser: a tiny worker builds a study with artifacts, the dashboard
serves it, headless Chromium (Selenium) checks the study list, the study page, the stage note and
a trial's artifacts. Screenshots land in test-artifacts/dashboard-*.png for CI to show."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import optuna
import pytest

from tests.conftest import BIN, REPO
from tests.workers import worker_env

log = logging.getLogger(__name__)

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SHOTS = REPO / "test-artifacts"
STUDY = "browser_tiny"
WAIT = 20  # seconds for the single-page app to render a view


def _browser_missing() -> str | None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    return f"{' and '.join(missing)} not installed (scripts/provision-services installs them)" \
        if missing else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, server: subprocess.Popen, log_path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"hpo dashboard exited {server.returncode}:\n"
                                 f"{log_path.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"hpo dashboard did not answer {url} in {timeout}s:\n"
                         f"{log_path.read_text()}")


def _chrome(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage", "--window-size=1400,1000",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


@pytest.fixture
def dashboard(tmp_path):
    """A study of 2 finished tiny trials with artifacts, served by `hpo dashboard`: its base URL
    and the study's id."""
    assert _browser_missing() is None, _browser_missing()  # in CI the browser must be there
    storage, artifacts = f"sqlite:///{tmp_path / 'hpo.db'}", tmp_path / "artifacts"
    worker = subprocess.run(
        [str(BIN / "hpo-worker"), "--study", STUDY, "--space", "tiny", "--storage", storage,
         "--artifacts", str(artifacts), "--n-trials", "2", "--epochs", "1", "--train-size", "200",
         "--devices", "cpu", "--seed", "0"],
        env=worker_env(), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert worker.returncode == 0, f"hpo-worker failed:\n{worker.stdout}\n{worker.stderr}"
    port = _free_port()
    log_path = tmp_path / "dashboard.log"
    with open(log_path, "w") as out:
        server = subprocess.Popen(
            [str(BIN / "hpo"), "dashboard", "--storage", storage, "--artifacts", str(artifacts),
             "--port", str(port)], env=worker_env(), cwd=tmp_path, stdout=out,
            stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_http(base + "/api/meta", server, log_path)
        rdb = optuna.storages.RDBStorage(storage)
        study_id = rdb.get_study_id_from_name(STUDY)
        rdb.engine.dispose()
        yield base, study_id
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.mark.skipif(_browser_missing() is not None and not os.environ.get("CI"),
                    reason=f"{_browser_missing()}; set CI=1 to make this a failure")
def test_dashboard_shows_study_note_trials_and_artifacts(dashboard, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    base, study_id = dashboard
    SHOTS.mkdir(exist_ok=True)
    for old in SHOTS.glob("dashboard-*.png"):
        old.unlink()
    shots: list[Path] = []
    driver = _chrome(tmp_path / "chromium-profile")

    def shot(name: str) -> Path:
        path = SHOTS / f"dashboard-{name}.png"
        driver.save_screenshot(str(path))
        shots.append(path)
        log.info("screenshot: %s", path)
        print(f"screenshot: {path}")
        return path

    def page_shows(url: str, *texts: str, name: str) -> str:
        """Open url, wait until the page text holds every one of texts, screenshot it."""
        driver.get(base + url)
        body = (By.TAG_NAME, "body")
        try:
            WebDriverWait(driver, WAIT).until(
                lambda d: all(t in d.find_element(*body).text for t in texts))
        except Exception:
            path = shot(name)
            text = driver.find_element(*body).text
            missing = [t for t in texts if t not in text]
            raise AssertionError(f"{url}: {missing} not shown after {WAIT}s; screenshot {path}; "
                                 f"page text:\n{text[:2000]}") from None
        path = shot(name)
        return str(path)

    try:
        page_shows("/dashboard", STUDY, name="top")
        page_shows(f"/dashboard/studies/{study_id}", STUDY, "Best Trial", "Study User Attributes",
                   name="study")
        page_shows(f"/dashboard/studies/{study_id}/note", "Stage tiny", "one conv layer; for tests",
                   "documented defaults", name="note")
        where = page_shows(f"/dashboard/studies/{study_id}/trials?numbers=0", "2 Trials",
                           "Trial 0", "Trial 1", "Artifacts", "learning-curve-trial0.png",
                           "config-trial0.json", name="trial")
        # The learning curve is shown as an image the browser really decoded from our store.
        image = WebDriverWait(driver, WAIT).until(EC.presence_of_element_located(
            (By.XPATH, "//img[contains(@src, '/artifacts/')]")))
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", image)
        WebDriverWait(driver, WAIT).until(
            lambda d: d.execute_script("return arguments[0].complete && "
                                       "arguments[0].naturalWidth > 0;", image),
            f"the artifact image {image.get_attribute('src')} did not load; see {where}")
        shot("trial-artifacts")
    finally:
        driver.quit()
        (SHOTS / "dashboard-screenshots.txt").write_text("".join(f"{p}\n" for p in shots))
    assert all(p.stat().st_size > 0 for p in shots), f"empty screenshots among {shots}"

