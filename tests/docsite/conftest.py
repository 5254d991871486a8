# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the checks in headless Chromium share: the browser, and a directory served on localhost.

`make docs-check` runs tests/docsite on its own (--confcutdir=tests/docsite), with
the docs venv: Playwright from PyPI driving Debian's /usr/bin/chromium (CHROMIUM
to choose another); no browser is downloaded.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator

import pytest

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# The closed network here refuses everything but localhost; these keep
# Chromium from trying (the brief of issue 16 lists them).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
        pass


@contextlib.contextmanager
def serve_directory(directory) -> Iterator[str]:
    """Serve ``directory`` on a free localhost port for the ``with`` block; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield "http://127.0.0.1:%d/" % httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


@pytest.fixture(scope="session")
def browser_context():
    # A missing Playwright fails the check: skipping would let `make docs-check` pass having checked nothing.
    try:
        from playwright import sync_api  # noqa: PLC0415  # pylint: disable=import-outside-toplevel
    except ImportError:
        sync_api = None
    if sync_api is None:
        pytest.fail("Playwright is missing: it is in docs/sphinx/requirements.txt (.venv-docs, made by make docs)")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail("%s is missing: `make deps` installs Debian's chromium" % CHROMIUM)
    profile = tempfile.mkdtemp(prefix="dom0-reflink-chromium.")
    try:
        with sync_api.sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                headless=True,
                chromium_sandbox=False,
                args=CHROMIUM_ARGS,
                viewport={"width": 1280, "height": 1000},
                timeout=60_000,
            )
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
