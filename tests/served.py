"""A uvicorn server in a thread on a free loopback port, for the tests that drive a real HTTP server."""

from __future__ import annotations

import socket
import threading
import time


class Served:
    """A uvicorn server in a thread, on a free loopback port."""

    def __init__(self, app):
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started and time.time() < deadline:
            time.sleep(0.02)
        assert self.server.started, "uvicorn did not start"

    def close(self):
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def headless_chrome(width: int, height: int, *extra_args: str):
    """Debian's chromium driven headless through selenium at ``width`` x ``height``; the test skips, saying
    why, where chromium, chromedriver or selenium are missing. The caller quits it."""
    import shutil

    import pytest

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip("headless browser test: Debian's chromium and chromium-driver are not installed "
                    "(apt-get install chromium chromium-driver)")
    pytest.importorskip("selenium", reason="headless browser test: selenium is not installed (pip install selenium)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run",
                f"--window-size={width},{height}", *extra_args):
        opts.add_argument(arg)
    drv = webdriver.Chrome(service=Service(executable_path=driver), options=opts)
    drv.set_page_load_timeout(60)
    return drv
