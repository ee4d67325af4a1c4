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
