"""Take the README's picture of the built-in dashboard, from a finished run.

Serves the run directory's dashboard on a free port of 127.0.0.1, opens it in
Debian's Chromium through Playwright (no browser download) and saves a
full-page screenshot::

    .venv/bin/scanpipe demo --scans 8 --dir runs/readme
    .venv/bin/python scripts/dashboard_screenshot.py runs/readme docs/dashboard.png

Needs the dev extra (playwright) and the ``chromium`` package.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from scanpipe.dashboard import serve

#: Chromium's flags for a machine without a screen or a network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--width", type=int, default=1100)
    args = parser.parse_args(argv)

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("error: Debian's chromium is not installed", file=sys.stderr)
        return 1
    from playwright.sync_api import sync_playwright

    server = serve(args.run_dir, port=0)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=chromium, args=CHROMIUM_ARGS
            )
            page = browser.new_page(viewport={"width": args.width, "height": 900})
            page.goto(server.url)
            page.wait_for_selector("body[data-ready=true]", timeout=20_000)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out), full_page=True)
            browser.close()
    finally:
        server.stop()
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
