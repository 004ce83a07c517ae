"""The explorer app (`make explorer`: book/explorer.ipynb served by Voila) driven in headless
Chromium: it loads without console errors, shows the picture, and a new class redraws it.

Voila runs in a subprocess on a free port of 127.0.0.1 and is always terminated. The machines
are offline: Voila's page template links Font Awesome's stylesheets from a CDN, which the page
here gets as empty stylesheets; any other request off the local server fails the test, since it
would break the app offline.
"""
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
from playwright.sync_api import expect

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "book" / "explorer.ipynb"
START_TIMEOUT_S = 60
PAGE_TIMEOUT_MS = 90_000   # Voila executes the notebook (Lite0, three photos) before the page is whole
CHANGE_TIMEOUT_MS = 30_000
# What Voila's lab template loads from a CDN: icon fonts only, which the explorer does not use.
CDN_STYLESHEETS = re.compile(r"^https://cdn\.jsdelivr\.net/npm/@fortawesome/fontawesome-free@(\^|%5E)5/css/")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"voila exited with {process.returncode}:\n{log.read_text()[-3000:]}", pytrace=False)
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    pytest.fail(f"voila did not listen on port {port} within {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}",
                pytrace=False)


@pytest.fixture(scope="module")
def explorer_app(tmp_path_factory):
    """The URL of the app, served by Voila until the module's tests are done; and its log."""
    log = tmp_path_factory.mktemp("voila") / "voila.log"
    port = free_port()
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "voila", str(NOTEBOOK), f"--port={port}", "--no-browser",
             "--Voila.ip=127.0.0.1", "--show_tracebacks=True"],
            cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, env={**os.environ, "MPLBACKEND": "Agg"})
    try:
        wait_for_port(port, process, log)
        yield f"http://127.0.0.1:{port}/", log
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_changing_the_class_redraws_the_picture_without_console_errors(explorer_app, page, screenshots):
    url, log = explorer_app
    off_host = []

    def offline(route):
        if urlparse(route.request.url).hostname == "127.0.0.1":
            route.continue_()
            return
        off_host.append(route.request.url)
        if CDN_STYLESHEETS.match(route.request.url):
            route.fulfill(status=200, content_type="text/css", body="")
        else:
            route.abort()

    page.route("**/*", offline)
    page.goto(url, timeout=PAGE_TIMEOUT_MS)
    picture = page.locator("img.vizlib-explorer-picture")
    expect(picture).to_have_attribute("src", re.compile(r"^(blob|data):"), timeout=PAGE_TIMEOUT_MS)
    caption = page.locator(".vizlib-explorer-caption")
    expect(caption).to_contain_text("grad-cam", timeout=CHANGE_TIMEOUT_MS)
    page.screenshot(path=screenshots / "explorer-before.png", full_page=True)
    before, source_before = picture.screenshot(), picture.get_attribute("src")

    class_control = page.locator(".vizlib-explorer-class select")
    # ipywidgets writes option labels with non-breaking spaces
    runner_up = class_control.locator("option").nth(1).inner_text().replace("\xa0", " ")
    class_control.select_option(index=1)
    page.wait_for_function("before => document.querySelector('img.vizlib-explorer-picture').src !== before",
                           arg=source_before, timeout=CHANGE_TIMEOUT_MS)
    expect(caption).to_contain_text(f"class {runner_up.rsplit(' (', 1)[0]}", timeout=CHANGE_TIMEOUT_MS)
    after = picture.screenshot()
    page.screenshot(path=screenshots / "explorer-after.png", full_page=True)

    assert after != before, "the picture looks the same for another class"
    assert not page.errors, f"console errors: {page.errors}; off-host requests: {off_host}\nvoila log:\n{log.read_text()[-3000:]}"
    unexpected = [request for request in off_host if not CDN_STYLESHEETS.match(request)]
    assert not unexpected, f"the app requested hosts other than its server: {unexpected}"
