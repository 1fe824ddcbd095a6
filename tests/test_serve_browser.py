"""The demo page in a real browser: headless Chromium (Debian's `chromium`, driven by Playwright)
against a uvicorn server on a tiny guard. Skips where Chromium or Playwright is missing
(`bash scripts/setup.sh --browser` installs Chromium)."""

from __future__ import annotations

import os
import shutil

import pytest

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api")

from siren.features import join_prompt_response  # noqa: E402
from siren.runtime.guard import SirenGuard  # noqa: E402
from siren.runtime.serve import serve_limits, create_app, token_pieces  # noqa: E402
from test_guard import make_guard  # noqa: E402
from test_serve import ServerThread  # noqa: E402

CHROMIUM = os.environ.get("SIREN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(not (os.path.isfile(CHROMIUM) or shutil.which("chromium")),
                                reason="chromium not installed (bash scripts/setup.sh --browser)")


def open_page(url: str, screenshot, run, viewport=None):
    """Launch Chromium, load `url`, call run(page), screenshot to `screenshot`."""
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM if os.path.isfile(CHROMIUM) else shutil.which("chromium"),
                                    args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport=viewport or {"width": 1280, "height": 720})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            page.wait_for_function("document.body.dataset.state === 'idle'", timeout=30_000)
            out = run(page)
            page.screenshot(path=str(screenshot), full_page=True)
            assert not errors, errors
            return out
        finally:
            browser.close()


def test_demo_page_streams_and_marks_the_stop(tmp_path, tiny_llama_dir):
    folder, *_ = make_guard(tmp_path / "guard", tiny_llama_dir)
    guard = SirenGuard.from_pretrained(str(folder), device="cpu")
    prompt = "how can I hurt someone"
    response = "First you find out where they live, then you wait until night and break in quietly."
    pieces = token_pieces(guard.backbone.tokenizer, response)
    scores = [guard.score(join_prompt_response(prompt, "".join(pieces[:i + 1]))).score for i in range(len(pieces))]
    thr = round(sorted(scores)[len(scores) // 2], 4)  # the median: the line crosses it inside the answer
    first = next(i for i, s in enumerate(scores) if s >= thr)

    def run(page):
        page.fill("#prompt", prompt)
        page.fill("#response", response)
        page.fill("#threshold", str(thr))
        page.fill("#delay", "0")
        page.click("#run")
        page.wait_for_function("document.body.dataset.state === 'done' || document.body.dataset.state === 'error'",
                               timeout=60_000)
        return page.evaluate("""() => ({
            state: document.body.dataset.state, error: document.getElementById('error').textContent,
            count: Number(document.getElementById('score-line').dataset.count),
            points: document.getElementById('score-line').getAttribute('points').trim().split(/\\s+/),
            stopped: document.body.dataset.stopped,
            marker: document.getElementById('stop-marker').getAttribute('visibility'),
            label: document.getElementById('stop-label').textContent,
            thrY: Number(document.getElementById('threshold-line').getAttribute('y1')),
            answer: document.getElementById('answer').textContent,
            struck: Array.from(document.querySelectorAll('#answer .tok.after')).map(e => e.textContent).join(''),
        })""")

    shot = tmp_path / "demo.png"
    with ServerThread(create_app(guard, model_name="tiny-guard", limits=serve_limits())) as srv:
        got = open_page(srv.url + "/", shot, run)
    assert got["state"] == "done", got["error"]
    assert got["count"] == len(pieces) == len(got["points"])
    # The drawn line is the scores: y = T + (H - T - B) * (1 - s) with the page's margins (T 14, B 34, H 280).
    ys = [float(p.split(",")[1]) for p in got["points"]]
    assert ys == pytest.approx([14 + 232 * (1 - s) for s in scores], abs=0.06)
    assert got["thrY"] == pytest.approx(14 + 232 * (1 - thr), abs=1e-6)
    assert got["stopped"] == str(first) and got["marker"] == "visible"
    assert got["label"] == f"stopped after token {first + 1}"
    assert got["struck"] == "".join(pieces[first + 1:])
    assert got["answer"].replace("■ stopped", "") == response
    assert shot.is_file() and shot.stat().st_size > 10_000


PHONE = {"width": 390, "height": 844}
LAYOUT = """() => {
    const box = (id) => { const r = document.getElementById(id).getBoundingClientRect();
                          return {left: r.left, right: r.right, width: r.width, height: r.height}; };
    return {scrollWidth: document.documentElement.scrollWidth, clientWidth: document.documentElement.clientWidth,
            prompt: box('verdict-prompt'), response: box('verdict-response'),
            promptText: document.querySelector('#verdict-prompt .vvalue').textContent,
            responseText: document.querySelector('#verdict-response .vvalue').textContent,
            responseLabel: document.querySelector('#verdict-response .vlabel').textContent,
            stopper: document.getElementById('verdict-response').classList.contains('stopper'),
            status: document.getElementById('status').textContent,
            flaggedBy: document.getElementById('status').dataset.flaggedBy,
            message: document.getElementById('threshold-msg').textContent,
            error: document.getElementById('error').textContent, state: document.body.dataset.state};
}"""


def test_demo_page_on_a_phone_shows_both_verdicts(tmp_path, tiny_llama_dir):
    """390 x 844: no horizontal scroll, both verdict boxes on screen, the threshold checked in the
    page, and with an answer head the stop said to come from the answer's verdict."""
    from test_serve_pairs import PairGuard

    folder, *_ = make_guard(tmp_path / "guard", tiny_llama_dir)
    guard = PairGuard(SirenGuard.from_pretrained(str(folder), device="cpu"), debounce=1)

    def run(page):
        out = {"idle": page.evaluate(LAYOUT)}
        for bad in ("1.5", "0", "1"):
            page.fill("#threshold", bad)
            page.click("#run")
            out[bad] = page.evaluate(LAYOUT)
        page.fill("#threshold", "0.01")  # every answer score is over it: the answer's verdict stops the stream
        page.fill("#delay", "0")
        page.click("#run")
        page.wait_for_function("document.body.dataset.state === 'done' || document.body.dataset.state === 'error'",
                               timeout=60_000)
        out["done"] = page.evaluate(LAYOUT)
        return out

    shot = tmp_path / "phone.png"
    with ServerThread(create_app(guard, model_name="pair-guard", limits=serve_limits())) as srv:
        got = open_page(srv.url + "/", shot, run, viewport=PHONE)
    for key in ("idle", "done"):
        g = got[key]
        assert g["scrollWidth"] <= PHONE["width"], (key, g["scrollWidth"])  # no horizontal scroll
        for box in (g["prompt"], g["response"]):
            assert box["width"] > 100 and box["height"] > 20 and 0 <= box["left"] and box["right"] <= PHONE["width"]
    for bad in ("1.5", "0", "1"):
        assert "between 0 and 1" in got[bad]["message"] and got[bad]["state"] == "invalid"
    done = got["done"]
    assert done["state"] == "done", done["error"]
    assert done["message"] == ""
    assert done["flaggedBy"] == "response" and "by the answer’s verdict" in done["status"]
    assert done["stopper"] and done["responseText"].startswith("harmful")
    assert done["promptText"].startswith(("harmful", "safe"))


def test_demo_page_judges_a_finished_answer_at_its_own_threshold(tmp_path, tiny_llama_dir):
    """While streaming, the answer's score is shown against the stop line; an answer that runs to
    its end gets the finished answer's verdict, at the threshold the server gives with it."""
    from test_serve_pairs import ANSWER_THRESHOLD, PairGuard

    folder, *_ = make_guard(tmp_path / "guard", tiny_llama_dir)
    guard = PairGuard(SirenGuard.from_pretrained(str(folder), device="cpu"), debounce=1)

    def run(page):
        page.fill("#threshold", "0.999")   # a stop line no answer score reaches
        page.fill("#delay", "0")
        page.click("#run")
        page.wait_for_function("document.body.dataset.state === 'done'", timeout=60_000)
        return page.evaluate(LAYOUT)

    with ServerThread(create_app(guard, model_name="pair-guard", limits=serve_limits())) as srv:
        done = open_page(srv.url + "/", tmp_path / "finished.png", run, viewport=PHONE)
    assert "never crossed" in done["status"] and not done["stopper"]
    assert "finished answer" in done["responseLabel"]
    assert done["responseText"].endswith(str(ANSWER_THRESHOLD))   # the finished verdict's threshold, not 0.999


def test_demo_page_resets_the_status_on_an_error(tmp_path, tiny_llama_dir):
    folder, *_ = make_guard(tmp_path / "guard", tiny_llama_dir)
    guard = SirenGuard.from_pretrained(str(folder), device="cpu")

    def run(page):
        page.fill("#delay", "0")
        page.fill("#threshold", "0.01")
        page.click("#run")
        page.wait_for_function("document.body.dataset.state === 'done'", timeout=60_000)
        before = page.evaluate(LAYOUT)
        page.fill("#response", "")  # an empty answer is an error
        page.click("#run")
        page.wait_for_function("document.body.dataset.state === 'error'", timeout=60_000)
        return before, page.evaluate(LAYOUT)

    with ServerThread(create_app(guard, model_name="tiny-guard", limits=serve_limits())) as srv:
        before, after = open_page(srv.url + "/", tmp_path / "err.png", run, viewport=PHONE)
    assert "stopped after token" in before["status"] and before["flaggedBy"] == "text"
    assert "no answer head" in before["responseText"]
    assert before["promptText"].startswith("harmful")  # the prompt scored alone, at the page's threshold 0.01
    assert after["error"] and after["status"].startswith("Not streamed") and after["flaggedBy"] == ""
    assert after["promptText"] == after["responseText"] == "–"
