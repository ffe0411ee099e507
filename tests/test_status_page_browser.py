"""The status page in a real browser: Debian's Chromium, headless, driven by Selenium.

The agent runs as users run it, on the shipped config.yaml and its sandbox (see
tests/test_sandbox_cli.py for what the test changes in it). The page must render, its matrix must
show each sandbox scenario's outcome, and a probe's SMTP transcript must open on a click. A
screenshot is saved to test-artifacts/status-page.png.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By

from tests.agent_process import AgentProcess
from tests.test_sandbox_cli import EXPECTED, wait_for_every_outcome, write_shipped_config

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    assert not missing, f"install Debian's chromium and chromium-driver: {missing} missing"
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1280,1700",
    ):
        options.add_argument(flag)
    # An explicit driver path: Selenium never looks for (or downloads) a driver of its own.
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def agent_port(tmp_path: Path) -> Iterator[int]:
    agent = AgentProcess(write_shipped_config(tmp_path))
    try:
        line = agent.wait_for("status page on http://127.0.0.1:")
        port = int(line.rsplit(":", 1)[1].strip().rstrip("/"))
        wait_for_every_outcome(agent)
        yield port
    finally:
        if agent.proc.poll() is None:
            agent.kill()


def test_status_page_in_chromium_shows_the_sandbox_outcomes_and_opens_a_transcript(
    browser: WebDriver, agent_port: int
) -> None:
    base = f"http://127.0.0.1:{agent_port}"
    browser.get(f"{base}/")
    assert browser.title == "Deliverability status"
    refresh = browser.find_element(By.CSS_SELECTOR, 'meta[http-equiv="refresh"]')
    assert refresh.get_attribute("content") == "10"

    # Paused, so the page cannot reload between the click and the check.
    browser.get(f"{base}/?refresh=0")
    assert not browser.find_elements(By.CSS_SELECTOR, 'meta[http-equiv="refresh"]')
    cells = browser.find_elements(By.CSS_SELECTOR, "#matrix td[data-route]")
    shown = {
        (cell.get_attribute("data-route"), cell.get_attribute("data-mailbox")): cell
        for cell in cells
    }
    assert set(shown) == set(EXPECTED)
    for pair, outcome in EXPECTED.items():
        assert shown[pair].get_attribute("data-outcome") == outcome
        badge = shown[pair].find_element(By.CSS_SELECTOR, ".badge")
        assert badge.text == outcome and badge.is_displayed()
    assert "451 4.7.1 at mail" in shown["sandbox-throttled", "sandbox-inbox"].text

    inbox_row = next(
        row
        for row in browser.find_elements(By.CSS_SELECTOR, "#recent tr[data-probe]")
        if row.find_element(By.CSS_SELECTOR, ".badge").text == "inbox"
    )
    details = inbox_row.find_element(By.TAG_NAME, "details")
    transcript = details.find_element(By.TAG_NAME, "pre")
    assert details.get_attribute("open") is None
    assert not transcript.is_displayed()
    details.find_element(By.TAG_NAME, "summary").click()
    assert details.get_attribute("open") is not None
    assert transcript.is_displayed()
    lines = transcript.text.splitlines()
    assert lines[0].split()[:2] == ["banner", "220"]
    assert any(line.split()[:2] == ["end_of_data", "250"] for line in lines)
    assert "spf=pass dkim=pass dmarc=pass" in inbox_row.text

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "status-page.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.read_bytes().startswith(b"\x89PNG")
