"""The report in a real browser: headless Chromium opens index.html, every image loads,
the console shows no errors, nothing is fetched from the network; a screenshot is kept.

Needs the Debian packages ``chromium`` and ``chromium-driver`` (``.ci/install-external.sh``)
and the ``selenium`` Python package; skips without them unless XSCALE_REQUIRE_EXTERNAL=1.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.external

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


def _missing(reason: str) -> None:
    if os.environ.get("XSCALE_REQUIRE_EXTERNAL") == "1":
        pytest.fail(f"{reason} (XSCALE_REQUIRE_EXTERNAL=1: external programs are required)")
    pytest.skip(reason)


@pytest.fixture
def browser(tmp_path: Path):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("the selenium Python package is not installed")
    binary = next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p),
        None,
    )
    driver_path = shutil.which("chromedriver") or (
        "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None
    )
    if binary is None or driver_path is None:
        _missing("Chromium or chromedriver not found (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.add_argument("--window-size=1280,1000")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _keep(screenshot: Path) -> None:
    artifacts = os.environ.get("XSCALE_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy2(screenshot, Path(artifacts) / screenshot.name)


def _check_page(driver, url: str) -> dict:
    driver.get(url)
    state = driver.execute_script(
        """
        const imgs = Array.from(document.images);
        return {
          ready: document.readyState,
          n_images: imgs.length,
          broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt),
          resources: performance.getEntriesByType('resource').map(e => e.name),
          title: document.title,
          scripts: document.scripts.length,
          height: document.documentElement.scrollHeight,
        };
        """
    )
    severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    assert severe == []
    assert state["ready"] == "complete"
    assert state["broken"] == []
    assert [r for r in state["resources"] if not r.startswith(("file:", "data:"))] == []
    assert state["scripts"] == 0  # the XSS display name did not become a script
    return state


def test_report_in_headless_chromium(browser, make_run, tmp_path: Path) -> None:
    from reports import build_report

    index = build_report(make_run("run", with_tractography=True))
    state = _check_page(browser, index.resolve().as_uri())
    assert state["n_images"] == len(list((index.parent / "figures").glob("*.png")))
    assert state["n_images"] >= 9
    assert state["title"] == "XScale report: crossings"
    text = browser.find_element("tag name", "body").text
    assert "<script>alert(1)</script>" in text  # shown as text, not run
    browser.set_window_size(1280, min(int(state["height"]) + 100, 12000))
    screenshot = tmp_path / "report-screenshot.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000
    _keep(screenshot)


def test_diff_page_in_headless_chromium(browser, make_run, tmp_path: Path) -> None:
    from reports import diff_runs

    a = make_run("a", with_report_data=False, with_voxels=False)
    page = tmp_path / "diff.html"
    page.write_text(diff_runs(a, a).to_html(), encoding="utf-8")
    state = _check_page(browser, page.resolve().as_uri())
    assert state["n_images"] == 0
    assert "no change" in browser.find_element("tag name", "body").text
