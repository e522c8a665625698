"""Debian's headless Chromium driven by Playwright, as the browser tests open it.

`open_page(report, on_console)` yields one page of 1400×900 whose expectations and actions wait
at most 15 s; the page's console errors go through `on_console` and its uncaught exceptions into
`report["console_errors"]`. Never a downloaded browser: CONSOLE_CHROMIUM, or /usr/bin/chromium.
"""

import contextlib
import os

from playwright.sync_api import expect, sync_playwright

CHROMIUM = os.environ.get("CONSOLE_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@contextlib.contextmanager
def open_page(report, on_console):
    expect.set_options(timeout=15_000)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, timeout=30_000)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(15_000)
            page.on("console", on_console)
            page.on("pageerror", lambda e: report["console_errors"].append(str(e)))
            yield page
        finally:
            browser.close()
