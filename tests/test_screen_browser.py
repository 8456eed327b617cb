"""A real browser on the screen of a running demo (`inspector demo`, the shipped demo engine, capture on): headless
Debian chromium driven by Selenium sees each camera's preview change, the strip map draw the planted roll mark,
evidence crops beside the last defects, and an alarm appear and clear. Its screenshot is docs/screen.png (README
"The operator's screen")."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import ROOT, wait_for

pytestmark = [pytest.mark.redis, pytest.mark.slow]
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOT = ROOT / "docs" / "screen.png"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def demo_screen(tmp_path: Path):
    """`inspector demo` in a process of its own; yields the screen's address it printed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "inspector.cli", "demo", "--seconds", "240", "--threads", "1",
                             "--capture", str(tmp_path / "capture"),  # evidence crops for the defects list
                             "--screen-address", f"127.0.0.1:{_free_port()}"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()  # type: ignore
    address, seen = None, []
    try:
        while address is None:
            line = lines.get(timeout=120)
            seen.append(line)
            if line.startswith("operator's screen on "):
                address = line.split()[3]
        yield address
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def browser():
    if not (Path(CHROMEDRIVER).exists() and Path(CHROMIUM).exists()):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1680,1250"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


COUNT_CLASS4 = """const c = document.getElementById('strip'); const d = c.getContext('2d').getImageData(0, 0, c.width,
c.height).data; let n = 0; for (let i = 0; i < d.length; i += 4) { if (d[i] === 255 && d[i+1] === 159 && d[i+2] === 28)
n++; } return n;"""  # pixels of class 4's colour, #ff9f1c


def test_screen_of_a_running_demo(demo_screen: str, browser) -> None:
    browser.get(demo_screen)

    def js(code: str):  # the page redraws every second: read it in one script, no element held across redraws
        return browser.execute_script(code)

    def stamps() -> dict[str, str]:
        return js("return Object.fromEntries([...document.querySelectorAll('#previews img')].map("
                  "i => [i.dataset.camera, i.dataset.stamp || '']))")

    wait_for(lambda: len(stamps()) == 2 and all(stamps().values()), 120, "a preview of each camera", 0.2)
    first = stamps()
    assert set(first) == {"top-1", "top-2"}
    wait_for(lambda: all(v != first[k] for k, v in stamps().items()), 30, "every preview to change", 0.2)
    loaded = js("return [...document.querySelectorAll('#previews img')].map(i => i.naturalWidth)")
    assert loaded == [800, 800]  # the JPEGs arrived and decoded

    # the strip map of the current coil: the planted roll mark is class 4 at 800 mm across, found periodic
    counts = "return document.getElementById('coil-counts').textContent"
    wait_for(lambda: js(counts) and "periodic marks 0" not in js(counts), 120, "a periodic mark on the strip map", 0.2)
    assert int(js("return document.getElementById('strip').dataset.boxes")) > 0
    assert js(COUNT_CLASS4) > 20  # class 4 boxes drawn in their colour

    # the last defects carry their evidence crops (capture on in the demo), served from capture.folder
    crops = "return [...document.querySelectorAll('#defects img')].filter(i => i.complete && i.naturalWidth > 0).length"
    wait_for(lambda: js(crops) > 0, 120, "an evidence crop in the defects list", 0.2)

    # a closed coil is listed, and its report opens from the page
    links = "return [...document.querySelectorAll('#reports a')].map(a => a.href)"
    wait_for(lambda: js(links), 120, "a past coil's report link", 0.2)
    status = browser.execute_async_script("const done = arguments[arguments.length - 1]; "
                                          "fetch(arguments[0]).then(r => done(r.status), e => done(String(e)));",
                                          js(links)[0])
    assert status == 200

    # the roll-mark alarm appears on the page ...
    def alarm_ids() -> list[str]:
        return js("return [...document.querySelectorAll('#alarms li[data-id]')].map(li => li.dataset.id)")

    wait_for(lambda: any(i.startswith("roll-mark@") for i in alarm_ids()), 120, "the roll-mark alarm", 0.2)
    alarm = next(i for i in alarm_ids() if i.startswith("roll-mark@"))
    text = js(f"return document.querySelector('#alarms li[data-id=\"{alarm}\"]').textContent")
    assert "pitch" in text and "work-top" in text
    SHOT.parent.mkdir(exist_ok=True)
    browser.save_screenshot(str(SHOT))
    # ... and clears when its coil is done (the cameras move on to the next coil)
    wait_for(lambda: alarm not in alarm_ids(), 120, f"alarm {alarm} to clear", 0.2)
    log = js("return document.getElementById('alarm-log').textContent")
    assert f"cleared: roll-mark: periodic mark on coil {alarm.split('@')[1]}" in log
    assert SHOT.stat().st_size > 50_000
