"""The sketch-search page in a real browser: headless Chromium, driven by Selenium, against the real server.

``search_app.py`` is started as a user starts it (a subprocess on 127.0.0.1, a free port) over a generated
demo dataset and a random-weight checkpoint. One test draws a star stroke by stroke and searches; the
other uploads a sketch file. Both check that the grid shows k photos in the order the API returns for
the same image. Screenshots are saved in the test's tmp folder (and copied to ``$SKETCH_APP_SCREENSHOTS``
when that is set).

Skipped, with the reason, when Selenium or the app's extras are not installed or Chromium and its driver
are not on the PATH (``.ci/run`` installs them).
"""
from __future__ import annotations

import base64
import io
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

for _module in ("starlette", "uvicorn", "multipart"):
    pytest.importorskip(_module, reason="the app's extras are not installed (pip install -r requirements-app.txt)")
webdriver = pytest.importorskip("selenium.webdriver", reason="Selenium is not installed (requirements-app.txt)")

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from data.demo import generate_demo_dataset  # noqa: E402
from tests.helpers_retrieval import make_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
K = 7


def find_browser() -> tuple[str, str]:
    browser = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    driver = shutil.which("chromedriver") or next((p for p in ("/usr/lib/chromium/chromedriver",) if os.path.exists(p)),
                                                  None)
    if browser is None or driver is None:
        pytest.skip("Chromium and its driver are not installed (Debian: apt-get install chromium chromium-driver)")
    return browser, driver


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``python search_app.py`` on a generated demo dataset (4 unseen classes x 6 photos): its base URL."""
    find_browser()
    tmp = tmp_path_factory.mktemp("browser")
    generate_demo_dataset(tmp / "data", sketches_per_class=2, photos_per_class=1, zero_per_class=6, size=128)
    make_checkpoint(tmp / "run", "sketchy/zeroshot1", n_seen=8)
    (tmp / "run" / "results.json").write_text(json.dumps({"one_to_many": {"alpha": 0.8, "selected": {"M": 2, "K": 3}}}))
    port = free_port()
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "search_app.py"), "--resume_dir", str(tmp / "run"),
                             "--data_root", str(tmp / "data"), "--port", str(port), "--device", "cpu",
                             "--workers", "0"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            with urllib.request.urlopen(base + "/api/info", timeout=2) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"search_app.py did not start: {(tmp / 'server.log').read_text()[-2000:]}")
        time.sleep(0.2)
    yield base
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def browser(server):
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = find_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def api_search(base: str, data: bytes, k: int, extra: str = "") -> list[int]:
    request = urllib.request.Request(f"{base}/api/search?k={k}{extra}", data=data,
                                     headers={"Content-Type": "image/png"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return [r["index"] for r in json.loads(resp.read())["results"]]


def open_page(driver, base: str, k: int) -> None:
    driver.get(base + "/")
    wait = WebDriverWait(driver, 20)
    wait.until(lambda d: d.find_element(By.ID, "about").text not in ("", "loading…"))
    k_input = driver.find_element(By.ID, "k")
    k_input.clear()
    k_input.send_keys(str(k))


def wait_for_answer(driver, mode: str) -> dict:
    """The page's state once the answer to its latest search is on screen."""
    WebDriverWait(driver, 30).until(lambda d: d.execute_script(
        "const s = window.sketchSearch; return s.seq > 0 && s.shown === s.seq && s.lastMode === arguments[0] "
        "&& [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0);", mode))
    return driver.execute_script("const s = window.sketchSearch; return {png: s.lastPng, "
                                 "response: s.lastResponse, status: document.getElementById('status').textContent};")


def grid(driver) -> list[int]:
    return [int(c.get_attribute("data-index")) for c in driver.find_elements(By.CSS_SELECTOR, "#results .card")]


def screenshot(driver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    driver.save_screenshot(str(path))
    target = os.environ.get("SKETCH_APP_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / name)
    return path


def star_points(radius: float = 0.36) -> list[tuple[float, float]]:
    """The five tips of a pentagram on the unit sheet, in drawing order (every second tip)."""
    tips = [(0.5 + radius * math.cos(math.radians(-90 + 72 * i)), 0.52 + radius * math.sin(math.radians(-90 + 72 * i)))
            for i in range(5)]
    return [tips[(2 * i) % 5] for i in range(6)]


def draw_star(driver, steps: int = 8) -> list[tuple[float, float]]:
    """Five strokes, one per edge: press, ``steps`` moves, release; returns the tips (unit sheet)."""
    canvas = driver.find_element(By.ID, "pad")
    side = canvas.size["width"]
    offset = lambda x, y: (round((x - 0.5) * side), round((y - 0.5) * side))   # noqa: E731 - from the centre
    points = star_points()
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        chain = ActionChains(driver, duration=10)
        prev = offset(x0, y0)
        chain.move_to_element_with_offset(canvas, *prev).click_and_hold()
        for s in range(1, steps + 1):
            target = offset(x0 + (x1 - x0) * s / steps, y0 + (y1 - y0) * s / steps)
            chain.move_by_offset(target[0] - prev[0], target[1] - prev[1])
            prev = target
        chain.release().perform()
    return points[:5]


def test_draw_a_star_and_search(server, browser, tmp_path):
    open_page(browser, server, K)
    tips = draw_star(browser)
    assert browser.execute_script("return window.sketchSearch.strokes.length") == 5
    browser.find_element(By.ID, "search").click()
    state = wait_for_answer(browser, "draw")
    shown = grid(browser)
    screenshot(browser, tmp_path, "search_app_star.png")
    assert len(shown) == K
    png = base64.b64decode(state["png"].split(",", 1)[1])
    sent = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    assert sent.shape == (256, 256)
    for x, y in tips:                                   # the star's tips are inked, the corners are not
        assert sent[int(y * 255), int(x * 255)] < 128, (x, y)
    assert sent[5, 5] > 250 and sent[250, 250] > 250
    assert 0.02 < (sent < 128).mean() < 0.2
    assert shown == api_search(server, png, K)          # the grid is the API's answer for the same drawing
    ranks = [int(c.get_attribute("data-rank")) for c in browser.find_elements(By.CSS_SELECTOR, "#results .card")]
    assert ranks == list(range(1, K + 1))
    assert f"{K} photos in" in state["status"]
    browser.find_element(By.CSS_SELECTOR, "#results .card").click()       # click to enlarge
    lightbox = browser.find_element(By.ID, "lightbox")
    WebDriverWait(browser, 10).until(lambda d: lightbox.is_displayed())
    assert browser.find_element(By.ID, "lightbox-img").get_attribute("src").endswith(f"/photo/{shown[0]}")
    screenshot(browser, tmp_path, "search_app_enlarged.png")
    lightbox.click()
    # undo removes the last stroke, clear empties the pad
    browser.find_element(By.ID, "undo").click()
    assert browser.execute_script("return window.sketchSearch.strokes.length") == 4
    Select(browser.find_element(By.ID, "class")).select_by_index(1)       # "I drew" belongs to this sketch
    browser.find_element(By.ID, "clear").click()
    assert browser.execute_script("return window.sketchSearch.strokes.length") == 0
    assert browser.find_element(By.ID, "class").get_attribute("value") == ""
    # the page says which classes the gallery holds (a drawing of another class gets the nearest of these)
    holds = browser.find_element(By.ID, "gallery-classes").text
    assert "only the 4 unseen classes" in holds, holds
    assert browser.execute_script("return document.querySelector('link[rel=icon]').href").endswith("favicon.svg")


def test_upload_a_sketch_file(server, browser, tmp_path):
    sketch = Image.new("RGB", (300, 300), "white")
    ImageDraw.Draw(sketch).ellipse((50, 50, 250, 250), outline="black", width=6)
    path = tmp_path / "circle.png"
    sketch.save(path)
    open_page(browser, server, K + 2)
    browser.find_element(By.ID, "upload").send_keys(str(path))
    state = wait_for_answer(browser, "upload")
    screenshot(browser, tmp_path, "search_app_upload.png")
    assert state["png"] is None                          # the file itself was sent, not a re-drawing
    shown = grid(browser)
    assert len(shown) == K + 2
    assert shown == api_search(server, path.read_bytes(), K + 2)
    # the one-to-many switch (enabled once the codewords are fitted) searches again with cluster matching
    switch = browser.find_element(By.ID, "otm")
    WebDriverWait(browser, 30).until(lambda d: switch.is_enabled())
    before = browser.execute_script("return window.sketchSearch.seq")
    switch.click()
    WebDriverWait(browser, 30).until(lambda d: d.execute_script("return window.sketchSearch.seq") > before)
    state = wait_for_answer(browser, "upload")
    assert state["response"]["one_to_many"] is True and "one-to-many" in state["status"]
    assert grid(browser) == api_search(server, path.read_bytes(), K + 2, "&one_to_many=1")
