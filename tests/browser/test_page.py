"""The page in a real headless Chromium (Debian's), driven by Playwright, over the real system:
upload an edited photo, see its original first, click it for "more like this"; drop, paste and
keyboard; a key made of HTML shows as text; readable on a phone; a screenshot for the docs."""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from cbir.ids import image_id
from demo.photos import edited_copies, encode_jpeg
from tests.web.system import HTML_NAME, System, web_missing_shard_1

pytestmark = pytest.mark.slow
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "img" / "web.png"


@pytest.fixture
def page(browser: Any, system: System) -> Any:
    # bypass_csp: Playwright's waits evaluate strings, which the page's CSP forbids; it also
    # makes the HTML-key test stronger (textContent alone must keep the key inert).
    context = browser.new_context(viewport={"width": 1100, "height": 900}, bypass_csp=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(system.url + "/")
    page.wait_for_function("document.getElementById('status-shards').textContent === '2'")
    yield page
    context.close()
    assert not errors, errors


def _upload(page: Any, name: str, data: bytes) -> None:
    page.set_input_files("#file-input", files=[
        {"name": name, "mimeType": "image/jpeg", "buffer": data}])


def _keys(page: Any) -> list[str]:
    page.wait_for_function("document.querySelectorAll('#results .key').length > 0 && "
                           "!document.getElementById('results').hasAttribute('aria-busy')")
    return [str(k) for k in page.locator("#results .key").all_text_contents()]


def _wait_thumbnails(page: Any) -> None:
    page.wait_for_function("[...document.querySelectorAll('#results img')].every("
                           "i => i.complete && i.naturalWidth > 0)")


def test_upload_an_edited_photo_then_more_like_this(page: Any, system: System,
                                                    tmp_path: Path) -> None:
    crop = dict(edited_copies(system.photos["chelsea"]))["crop"]
    _upload(page, "chelsea-crop.jpg", crop)
    keys = _keys(page)
    assert keys[0] == system.keys["chelsea"]
    first = page.locator("#results .hit").first
    assert first.get_attribute("data-image-id") == str(image_id(system.keys["chelsea"]))
    assert float(first.locator(".score").text_content()) > 0.8
    assert page.locator("#partial-banner").is_hidden()
    assert page.locator("#status-version").text_content() not in ("", "…", "none")
    assert page.locator("#status-images").text_content() == str(len(system.keys))
    _wait_thumbnails(page)
    page.screenshot(path=str(tmp_path / "web.png"), full_page=True)
    if os.environ.get("CBIR_UPDATE_SCREENSHOT"):  # refresh the README's screenshot
        shutil.copyfile(tmp_path / "web.png", DOCS_SCREENSHOT)
    assert (tmp_path / "web.png").stat().st_size > 10_000

    first.click()
    page.wait_for_function("document.getElementById('query-title').textContent"
                           ".startsWith('More like ')")
    more = _keys(page)
    assert page.locator("#query-title").text_content() == f"More like {system.keys['chelsea']}"
    assert system.keys["chelsea"] not in more and len(more) >= 3
    assert set(more) <= set(system.keys.values())


def test_drop_paste_and_keyboard_search(page: Any, system: System) -> None:
    coffee = base64.b64encode(dict(edited_copies(system.photos["coffee"]))["colour"]).decode()
    make_file = ("b64 => { const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));"
                 " const dt = new DataTransfer();"
                 " dt.items.add(new File([bytes], 'q.jpg', {type: 'image/jpeg'})); return dt; }")
    page.evaluate(f"b64 => document.getElementById('drop-zone').dispatchEvent(new DragEvent("
                  f"'drop', {{dataTransfer: ({make_file})(b64), bubbles: true, "
                  "cancelable: true}))", coffee)
    assert _keys(page)[0] == system.keys["coffee"]

    horse = base64.b64encode(dict(edited_copies(system.photos["horse"]))["flip"]).decode()
    page.evaluate(f"b64 => document.dispatchEvent(new ClipboardEvent('paste', "
                  f"{{clipboardData: ({make_file})(b64)}}))", horse)
    page.wait_for_function("document.querySelector('#results .key').textContent"
                           f" === {system.keys['horse']!r}")

    with page.expect_file_chooser() as chooser:
        page.focus("#drop-zone")
        page.keyboard.press("Enter")
    chooser.value.set_files(files=[{"name": "a.jpg", "mimeType": "image/jpeg",
                                    "buffer": encode_jpeg(system.photos["astronaut"].pixels)}])
    page.wait_for_function("document.querySelector('#results .key').textContent"
                           f" === {system.keys['astronaut']!r}")
    page.keyboard.press("Tab")  # results are buttons: reachable and usable from the keyboard
    page.locator("#results .hit").first.focus()
    page.keyboard.press("Enter")
    page.wait_for_function("document.getElementById('query-title').textContent"
                           ".startsWith('More like ')")


def test_a_key_made_of_html_renders_as_text(page: Any, system: System) -> None:
    _upload(page, "x.jpg", encode_jpeg(system.photos[HTML_NAME].pixels))
    keys = _keys(page)
    assert keys[0] == system.keys[HTML_NAME] and "<script>" in keys[0]
    assert page.evaluate("window.pwned") is None
    assert page.locator("#results script").count() == 0
    assert page.locator("#results img[src='x']").count() == 0
    _wait_thumbnails(page)  # its thumbnail still loads: the id, not the key, is in the URL
    page.locator("#results .hit").first.click()
    assert page.locator("#query-title").text_content() == f"More like {system.keys[HTML_NAME]}"
    assert page.evaluate("window.pwned") is None


def test_readable_on_a_phone(browser: Any, system: System, tmp_path: Path) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True,
                                  device_scale_factor=2, bypass_csp=True)
    page = context.new_page()
    page.goto(system.url + "/")
    _upload(page, "c.jpg", dict(edited_copies(system.photos["coins"]))["rotate"])
    assert _keys(page)[0] == system.keys["coins"]
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    columns = page.evaluate("getComputedStyle(document.getElementById('results'))"
                            ".gridTemplateColumns.split(' ').length")
    assert columns == 2
    page.screenshot(path=str(tmp_path / "web-phone.png"))
    context.close()


def test_a_partial_answer_shows_a_banner_naming_the_shard(browser: Any, system: System) -> None:
    context = browser.new_context(bypass_csp=True)
    page = context.new_page()
    with web_missing_shard_1(system) as url:
        # A link to "more like this" of a shard-0 image (an id query: this coordinator has
        # no model), the way the page writes it into the address bar.
        on_shard0 = next(k for k in system.keys.values() if image_id(k) % 2 == 0)
        page.goto(f"{url}/?image_id={image_id(on_shard0)}")
        banner = page.locator("#partial-banner")
        banner.wait_for(state="visible")
        assert "shard(s) 1 did not answer" in str(banner.text_content())
        assert on_shard0 not in _keys(page)  # the query image itself is left out
        assert all(image_id(k) % 2 == 0 for k in _keys(page))
        page.reload()  # the dead replica is ejected by now: the status panel says so
        page.wait_for_function("document.getElementById('status-shards').textContent"
                               " === '2 (1 down)'")
    context.close()
