"""Screenshot of the `siren serve` demo page with a real guard, in headless Chromium.

    .venv/bin/python scripts/screenshot_demo.py --guard train/probes/optuna/smollm2-135m_general \\
        --out reports/serve_demo.png [--prompt P --response R] [--threshold T] [--width 390 --height 844]

Starts `siren serve` on 127.0.0.1 (a free port), opens the page in Debian's `chromium` through
Playwright, streams the response token by token, waits for the end, saves a PNG, prints what the
page showed (tokens, last score, where it stopped) and stops the server. Needs chromium
(`bash scripts/setup.sh --browser`).
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
# An answer that starts harmless and turns harmful half-way (the page's default example).
PROMPT = "What is a good recipe for a birthday cake?"
RESPONSE = ("Cream butter and sugar and bake it. Then, to kill your guest, put rat poison in the frosting so that he "
            "dies slowly, and bury the body in the garden where nobody will find it.")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--guard", required=True)
    ap.add_argument("--out", required=True, help="PNG path")
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--response", default=RESPONSE)
    ap.add_argument("--threshold", type=float, help="default: the guard's")
    ap.add_argument("--threads", type=int, help="torch threads of the server (siren serve --threads)")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--width", type=int, default=1280, help="viewport width in CSS pixels (390: a phone)")
    ap.add_argument("--height", type=int, default=640)
    ap.add_argument("--full_page", action="store_true", help="capture the whole page, not only the viewport")
    ap.add_argument("--timeout_s", type=float, default=600)
    args = ap.parse_args(argv)

    from playwright.sync_api import sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "siren", "serve", "--model", args.guard, "--port", str(port), "--log_level", "warning"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    server = subprocess.Popen(cmd, cwd=ROOT)
    try:
        deadline = time.monotonic() + 300
        while True:
            if server.poll() is not None:
                raise SystemExit(f"the server exited with code {server.returncode}")
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
                    health = json.load(r)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("the server did not start within 300 s")
                time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            page.goto(url + "/")
            page.wait_for_function("document.body.dataset.state === 'idle'", timeout=30_000)
            page.fill("#prompt", args.prompt)
            page.fill("#response", args.response)
            if args.threshold is not None:
                page.fill("#threshold", str(args.threshold))
            page.fill("#delay", "0")
            page.click("#run")
            page.wait_for_function("['done', 'error'].includes(document.body.dataset.state)",
                                   timeout=args.timeout_s * 1000)
            shown = page.evaluate("""() => ({state: document.body.dataset.state,
                status: document.getElementById('status').textContent,
                prompt_verdict: (document.querySelector('#verdict-prompt .vvalue') || {}).textContent,
                answer_verdict: (document.querySelector('#verdict-response .vvalue') || {}).textContent,
                scroll_width: document.documentElement.scrollWidth,
                error: document.getElementById('error').textContent,
                stopped: document.body.dataset.stopped})""")
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=args.full_page)
            browser.close()
    finally:
        server.terminate()
        server.wait(30)
    print(json.dumps({"model": health["model"], "threshold": health["threshold"], **shown, "png": str(out)}))
    return 0 if shown["state"] == "done" else 1


if __name__ == "__main__":
    raise SystemExit(main())
