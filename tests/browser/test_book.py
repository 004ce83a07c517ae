"""The built book in headless Chromium, as a reader without a kernel or a network sees it.

The book comes from `make build-book`: its HTML in BOOK_HTML (default _build/html) and its source,
the notebooks nbval executed with the table of contents, in BOOK_SOURCE (default _build/executed).
The test serves the HTML from a local HTTP server and, for every page of the table of contents,
checks that it loads without console errors and without asking any other host for anything, shows
every figure its notebook made, shows no error or warning text, has no broken reference or
citation, renders its mathematics with MathJax, and that the static twins of the widgets
(`vizlib.widgets.LiveFigure`) swap their image when a control changes. A screenshot of each page
goes to the `screenshots` folder.
"""
from __future__ import annotations

import base64
import functools
import http.server
import os
import re
import threading
from pathlib import Path
from urllib.parse import unquote, urlsplit

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BOOK_HTML = Path(os.environ.get("BOOK_HTML", ROOT / "_build" / "html"))
BOOK_SOURCE = Path(os.environ.get("BOOK_SOURCE", ROOT / "_build" / "executed"))
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
IMAGE_MIMES = ("image/png", "image/jpeg", "image/svg+xml", "image/gif")
# What a reader must never see in an output: a traceback, a warning or an error with its class
# name, or a path on the machine that built the book.
BAD_OUTPUT = re.compile(r"Traceback \(most recent call last\)|\b[A-Z]\w*(?:Warning|Error)\b:"
                        r"|/site-packages/|/home/\w|/tmp/\w|/work/\w|\bwarnings\.warn\(")
MATH = re.compile(r"\$[^$\n]+\$|\\begin\{|```\{math\}|\{math\}`")


def toc_pages(toc: Path) -> list[str]:
    """The documents of a jupyter-book table of contents, root first, without suffix."""
    def files(node):
        if isinstance(node, dict):
            found = [node["file"]] if "file" in node else []
            for key in ("parts", "chapters", "sections"):
                for child in node.get(key, []):
                    found += files(child)
            return found
        return []
    content = yaml.safe_load(toc.read_text())
    return [content["root"], *files(content)]


TOC = BOOK_SOURCE / "_toc.yml" if (BOOK_SOURCE / "_toc.yml").exists() else ROOT / "_toc.yml"
PAGES = toc_pages(TOC)


def source_of(page: str) -> Path:
    for suffix in (".ipynb", ".md"):
        if (BOOK_SOURCE / f"{page}{suffix}").exists():
            return BOOK_SOURCE / f"{page}{suffix}"
    pytest.fail(f"{page}: no source in {BOOK_SOURCE} (run `make build-book`, or set BOOK_SOURCE)",
                pytrace=False)


def rendered_mime(output) -> str | None:
    """The MIME type myst-nb renders for an output, with the priorities of _config.yml."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    order = {"application/vnd.jupyter.widget-view+json": 10, "application/javascript": 20,
             "text/html": 30, "image/svg+xml": 40, "image/png": 50, "image/gif": 60,
             "image/jpeg": 70, "text/markdown": 80, "text/latex": 90, "text/plain": 100}
    for builder, mime, rank in config["sphinx"]["config"].get("nb_mime_priority_overrides", []):
        if builder in ("*", "html"):
            order[mime] = rank
    available = [mime for mime in output.get("data", {}) if order.get(mime) is not None]
    return min(available, key=order.get, default=None)


def expected_figures(source: Path) -> int:
    """The images a page must show: image outputs, and the <img> of HTML outputs, of every cell
    whose output the page keeps."""
    if source.suffix != ".ipynb":
        return 0
    count = 0
    for cell in nbformat.read(str(source), as_version=4).cells:
        tags = cell.metadata.get("tags", [])
        if cell.cell_type != "code" or {"remove-output", "remove-cell"} & set(tags):
            continue
        for output in cell.outputs:
            mime = rendered_mime(output)
            if mime in IMAGE_MIMES:
                count += 1
            elif mime == "text/html":
                count += len(re.findall(r"<img\b", output["data"][mime]))
    return count


def has_math(source: Path) -> bool:
    if source.suffix == ".md":
        return bool(MATH.search(source.read_text()))
    cells = nbformat.read(str(source), as_version=4).cells
    return any(cell.cell_type == "markdown" and MATH.search(cell.source) for cell in cells)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        # Chromium asks every site for /favicon.ico; a book without one is not a broken page.
        if self.path == "/favicon.ico" and not (Path(self.directory) / "favicon.ico").exists():
            self.send_response(204)
            self.end_headers()
            return
        super().do_GET()


@pytest.fixture(scope="module")
def book_url():
    """The book over HTTP on a free local port (file:// URLs block some of the theme's scripts)."""
    if not (BOOK_HTML / "index.html").exists():
        pytest.fail(f"no built book in {BOOK_HTML}: run `make build-book` (or set BOOK_HTML)",
                    pytrace=False)
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(BOOK_HTML)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def open_page(page, url: str) -> list[str]:
    """Load `url` and wait for MathJax; returns the URLs of requests to hosts other than ours."""
    remote = []
    page.on("request", lambda request: urlsplit(request.url).scheme in ("http", "https")
            and urlsplit(request.url).hostname not in LOCAL_HOSTS and remote.append(request.url))
    response = page.goto(url, wait_until="load")
    assert response is not None and response.ok, f"{url}: HTTP {response and response.status}"
    page.wait_for_function("() => !window.MathJax || (window.MathJax.startup"
                           " && window.MathJax.startup.promise)", timeout=30_000)
    page.evaluate("() => window.MathJax ? window.MathJax.startup.promise : null")
    page.wait_for_load_state("networkidle")
    return remote


def broken_links(page, url: str) -> list[str]:
    """Internal links whose page is missing from the build, or whose anchor is not on it."""
    hrefs = page.eval_on_selector_all("article a.reference.internal[href], .bd-article a[href]",
                                      "links => links.map(a => a.getAttribute('href'))")
    broken, anchors = [], {}
    for href in sorted(set(hrefs)):
        parts = urlsplit(href)
        if parts.scheme or parts.netloc:
            continue
        target = Path(unquote(urlsplit(url).path)).parent / unquote(parts.path) if parts.path \
            else Path(unquote(urlsplit(url).path))
        file = BOOK_HTML / os.path.normpath(str(target)).lstrip("/")
        if not file.exists():
            broken.append(href)
            continue
        if parts.fragment:
            if file not in anchors:
                anchors[file] = set(re.findall(r'\bid="([^"]+)"', file.read_text(errors="replace")))
            if unquote(parts.fragment) not in anchors[file]:
                broken.append(href)
    return broken


def test_every_page_of_the_toc_was_built():
    missing = [page for page in PAGES if not (BOOK_HTML / f"{page}.html").exists()]
    assert not missing, f"pages of {TOC} missing from {BOOK_HTML}: {missing}"


@pytest.mark.parametrize("name", PAGES)
def test_page_shows_every_figure_and_no_error_offline(name, page, book_url, screenshots):
    source = source_of(name)
    url = f"{book_url}/{name}.html"
    remote = open_page(page, url)
    page.screenshot(path=str(screenshots / f"{name.replace('/', '_')}.png"), full_page=True)
    problems = []
    if page.errors:
        problems.append(f"console errors: {page.errors}")
    if remote:
        problems.append(f"requests to other hosts: {remote}")

    shown = page.locator(".cell_output img").count()
    expected = expected_figures(source)
    if shown != expected:
        problems.append(f"{shown} images in the outputs, {expected} in the executed notebook")
    broken_images = page.eval_on_selector_all(
        ".cell_output img", "images => images.filter(i => !i.complete || i.naturalWidth === 0)"
        ".map(i => i.getAttribute('alt') || i.src.slice(0, 60))")
    if broken_images:
        problems.append(f"images that did not load: {broken_images}")

    stderr = page.locator(".cell_output .stderr, .cell_output .traceback, .cell_output .error")
    if stderr.count():
        problems.append(f"stderr or error outputs: {stderr.all_inner_texts()[:3]}")
    for text in page.locator(".cell_output").all_inner_texts():
        match = BAD_OUTPUT.search(text)
        if match:
            problems.append(f"error or warning text in an output: "
                            f"{text[max(match.start() - 80, 0):match.end() + 80]!r}")

    body = page.locator("article").inner_text()
    if page.locator(".problematic").count():
        problems.append(f"unresolved references: {page.locator('.problematic').all_inner_texts()}")
    for marker in ("??", "{cite}", "{ref}", "{numref}", "{eq}"):
        if marker in body:
            at = body.index(marker)
            problems.append(f"unresolved {marker!r}: {body[max(at - 60, 0):at + 60]!r}")
    links = broken_links(page, url)
    if links:
        problems.append(f"broken internal links: {links}")

    if has_math(source):
        if page.locator("mjx-container").count() == 0:
            problems.append("the page has mathematics but MathJax rendered none")
        if page.locator("mjx-merror").count() or "Math input error" in body:
            problems.append(f"MathJax errors: {page.locator('mjx-merror').all_inner_texts()}")
    assert not problems, f"{name}:\n  " + "\n  ".join(problems)


def twin_pages() -> list[str]:
    pages = []
    for name in PAGES:
        path = BOOK_SOURCE / f"{name}.ipynb"
        if path.exists() and "vizlib-static" in path.read_text():
            pages.append(name)
    return pages


def swap_each_control(page, twin) -> list[str]:
    """Move each control of a twin to each of its other values; return what did not swap."""
    problems = []
    controls = twin.locator("[data-control]")
    for c in range(controls.count()):
        control = controls.nth(c)
        count = control.evaluate("e => e.tagName === 'SELECT' ? e.options.length : +e.max + 1")
        for value in range(count):
            before = twin.locator("img").get_attribute("src")
            if control.evaluate("e => +e.value") == value:
                continue
            control.evaluate("(e, v) => { e.value = v;"
                             " e.dispatchEvent(new Event('input', {bubbles: true})); }", value)
            after = twin.locator("img").get_attribute("src")
            if control.evaluate("e => +e.value") != value:
                problems.append(f"control {c}: value {value} was not kept")
            if after == before:
                problems.append(f"control {c}: value {value} left the image unchanged")
    return problems


@pytest.mark.parametrize("name", twin_pages() or ["(no page with a static twin)"])
def test_static_controls_swap_the_image(name, page, book_url, screenshots):
    assert name in PAGES, f"no executed notebook in {BOOK_SOURCE} has a widget's static twin"
    open_page(page, f"{book_url}/{name}.html")
    twins = page.locator(".vizlib-static")
    assert twins.count() >= 1, f"{name}: the notebook has a static twin, the page shows none"
    problems = []
    for t in range(twins.count()):
        twins.nth(t).scroll_into_view_if_needed()
        problems += [f"twin {t}: {p}" for p in swap_each_control(page, twins.nth(t))]
    twins.first.screenshot(path=str(screenshots / f"{name.replace('/', '_')}_twin.png"))
    assert not problems and not page.errors, f"{name}: {problems} {page.errors}"


def test_a_star_twin_moves_the_other_controls_to_a_precomputed_point(page):
    """On a star grid, a combination that was not drawn moves the other controls to the point
    that shares most of them: the image always matches what the controls say."""
    import ipywidgets
    import matplotlib.pyplot as plt

    from vizlib import widgets

    def draw(colour, size):
        figure, ax = plt.subplots(figsize=(1, 1))
        ax.set_title(f"{colour} {size}")
        return figure

    twin = widgets.live_figure(
        {"colour": ipywidgets.Dropdown(options=["red", "green", "blue"]),
         "size": ipywidgets.IntSlider(value=2, min=1, max=3)}, draw, max_images=4)
    assert len(twin.static_points) == 5          # a star: (red, 2), 2 colours, 2 sizes
    page.set_content(f"<html><body>{twin.static_html()}</body></html>")
    image, colour, size = page.locator("img"), page.locator("select"), page.locator("input")
    source = {(point["colour"], point["size"]): "data:image/webp;base64," + base64.b64encode(image).decode()
              for point, image in zip(twin.static_points, twin.static_images)}
    assert image.get_attribute("src") == source["red", 2]
    colour.select_option(label="blue")
    assert image.get_attribute("src") == source["blue", 2]
    assert size.evaluate("e => e.nextElementSibling.textContent") == "2"
    size.evaluate("e => { e.value = 2; e.dispatchEvent(new Event('input')); }")     # size 3
    assert colour.evaluate("e => e.options[e.selectedIndex].text") == "red"        # back to the centre
    assert size.evaluate("e => e.nextElementSibling.textContent") == "3"
    assert image.get_attribute("src") == source["red", 3]
    assert not page.errors, page.errors
