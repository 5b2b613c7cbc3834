"""The web page in headless Chromium (Debian's /usr/bin/chromium via playwright): pick, drop, see the right digit."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from test_serve import correctly_classified, start_server, stop_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)"
)


@pytest.fixture(scope="module")
def server(trained_ckpt):
    proc, url = start_server(trained_ckpt, "--no-access-log")
    yield url
    stop_server(proc)


@pytest.fixture(scope="module")
def page(server):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the browser is Debian's)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.requests_seen = []  # type: ignore[attr-defined]
            page.on("request", lambda request: page.requests_seen.append(request.url))
            page.set_default_timeout(30_000)
            yield page
        finally:
            browser.close()


def open_page(page, server: str) -> None:
    page.goto(f"{server}/")
    page.wait_for_function("document.getElementById('model-info').textContent.includes('FP_classifier')")


def test_pick_a_file_and_see_the_right_digit(page, server, trained_ckpt, digits_dir):
    ((path, digit),) = correctly_classified(trained_ckpt, digits_dir, count=1)
    open_page(page, server)
    assert "10 classes" in page.text_content("#model-info") and "32x32" in page.text_content("#model-info")
    page.fill("#topk", "3")
    page.set_input_files("#file-input", str(path))
    page.wait_for_selector("#results li")
    labels = page.eval_on_selector_all("#results li", "items => items.map(li => li.dataset.label)")
    assert len(labels) == 3 and labels[0] == digit
    assert page.text_content("#status").startswith(digit)
    widths = page.eval_on_selector_all("#results .fill", "bars => bars.map(b => parseFloat(b.style.width))")
    assert widths == sorted(widths, reverse=True) and widths[0] > 50
    page.wait_for_function("document.getElementById('preview').naturalWidth > 0")
    assert page.is_hidden("#error")
    for url in page.requests_seen:
        assert url.startswith(server) or url.startswith(("blob:", "data:")), f"the page fetched {url}"


def test_drop_an_image_and_see_the_right_digit(page, server, trained_ckpt, digits_dir):
    first, second = correctly_classified(trained_ckpt, digits_dir, count=2)
    path, digit = second
    open_page(page, server)
    payload = base64.b64encode(path.read_bytes()).decode()
    data_transfer = page.evaluate_handle(
        """([name, b64]) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], name, { type: 'image/png' }));
            return dt;
        }""",
        [path.name, payload],
    )
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": data_transfer})
    page.wait_for_selector("#results li")
    assert page.eval_on_selector("#results li", "li => li.dataset.label") == digit
    assert page.text_content("#file-name") == path.name


def test_a_non_image_shows_the_servers_message(page, server, tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("this is not an image")
    open_page(page, server)
    page.set_input_files("#file-input", str(bad))
    page.wait_for_selector("#error:not([hidden])")
    assert "not an image" in page.text_content("#error")
    assert page.eval_on_selector_all("#results li", "items => items.length") == 0


def test_no_output_before_an_upload_nor_after_an_error(page, server, tmp_path):
    """style.css's `.output { display: grid }` once beat the `hidden` attribute: a broken image showed."""
    open_page(page, server)
    assert page.is_hidden("#output") and page.is_hidden("#preview")
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    page.set_input_files("#file-input", str(bad))
    page.wait_for_selector("#error:not([hidden])")
    assert page.is_hidden("#output") and page.is_hidden("#preview")
    assert page.is_visible("#error")


def test_model_file_precision_and_a_small_image_drawn_large(page, server, trained_ckpt, digits_dir):
    ((path, digit),) = correctly_classified(trained_ckpt, digits_dir, count=1)
    open_page(page, server)
    assert page.text_content("#model-file") == "best.pth" and page.text_content("#model-precision") == "FP32"
    page.set_input_files("#file-input", str(path))
    page.wait_for_selector("#results li")
    page.wait_for_function("document.getElementById('preview').classList.contains('small')")
    natural = page.eval_on_selector("#preview", "img => [img.naturalWidth, img.naturalHeight]")
    box = page.eval_on_selector("#preview", "img => [img.getBoundingClientRect().width, img.clientHeight]")
    assert natural == [32, 32] and min(box) >= 120, f"a {natural} image drawn at {box} px"
    assert page.eval_on_selector("#preview", "img => getComputedStyle(img).imageRendering") == "pixelated"


@pytest.fixture(scope="module")
def catalog_server(digits_dir, trained_ckpt, tmp_path_factory):
    """serve.py --catalog: digits 0-3, 6 real images each, embedded by the served checkpoint."""
    from conftest import copy_digits

    from edgecls.cli.catalog import cli

    root = copy_digits(digits_dir, tmp_path_factory.mktemp("page_cat") / "d", digits="0123", n_train=6, n_val=2)
    cat = root / "CAT"
    assert cli(["build", str(root / "train"), "--model", str(trained_ckpt), "--out", str(cat), "--no-progress"]) == 0
    proc, url = start_server(trained_ckpt, "--catalog", str(cat), "--no-access-log")
    yield url, cat
    stop_server(proc)


def test_search_view_shows_the_nearest_products_and_their_images(page, catalog_server):
    from edgecls.embed.store import Embeddings

    url, cat = catalog_server
    emb = Embeddings.load(cat / "embeddings")
    query = cat / emb.paths[emb.labels.index("2")]  # a catalog image: its own copy is the nearest
    before = len(page.requests_seen)  # the page is shared with the tests of the plain server
    page.goto(f"{url}/")
    page.wait_for_function("document.getElementById('model-info').textContent.includes('FP_classifier')")
    assert page.is_hidden("#search-view")
    page.fill("#topk", "3")
    page.set_input_files("#file-input", str(query))
    page.wait_for_selector("#search-view:not([hidden])")
    products = page.eval_on_selector_all("#products li", "items => items.map(li => li.textContent)")
    assert len(products) == 3 and products[0].startswith("2 (")
    scores = [float(p.split("(")[1].rstrip(")")) for p in products]
    assert scores == sorted(scores, reverse=True)
    assert page.eval_on_selector_all("#matches li", "items => items.length") == 3
    page.wait_for_function("[...document.querySelectorAll('#matches img')].every(i => i.complete && i.naturalWidth)")
    first = page.eval_on_selector("#matches img", "img => [img.alt, img.naturalWidth, new URL(img.src).host]")
    assert first[0] == "2" and first[1] == 32 and first[2] == url.split("//")[1]  # a thumbnail the app served
    assert "1.000" in page.text_content("#matches li span")
    for seen in page.requests_seen[before:]:
        assert seen.startswith(url) or seen.startswith(("blob:", "data:")), f"the page fetched {seen}"
