"""Headless Chromium for the page tests (the app's page, the batch search's static page).

Skips the test, with the reason, when Chromium or its driver is not on the PATH (``.ci/run`` installs them);
Selenium itself is checked by the test modules (``pytest.importorskip``).
"""
from __future__ import annotations

import os
import shutil
from typing import Iterator

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_browser() -> tuple[str, str]:
    browser = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    driver = shutil.which("chromedriver") or next((p for p in ("/usr/lib/chromium/chromedriver",) if os.path.exists(p)),
                                                  None)
    if browser is None or driver is None:
        pytest.skip("Chromium and its driver are not installed (Debian: apt-get install chromium chromium-driver)")
    return browser, driver


def chromium() -> Iterator:
    """A headless Chromium driver (1280 x 900), quit when the generator is closed: ``yield from chromium()``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = find_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
