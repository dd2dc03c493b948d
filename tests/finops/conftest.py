"""A real HTTP server on 127.0.0.1 that answers like OpenCost's API, or fails
the ways a wrong URL or a struggling OpenCost does.

The first path segment chooses the behaviour: ``/ok/allocation`` serves the
hand-written allocation set in ``opencost_allocation.json``; ``/missing``
answers 404, ``/broken`` 500, ``/html`` a web page, ``/refusing`` an OpenCost
error body, ``/empty`` an empty set, and ``/slow`` answers only when the test
is over.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ALLOCATION_JSON = Path(__file__).with_name("opencost_allocation.json")


@dataclass
class OpenCostServer:
    base_url: str
    paths: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def url(self, behaviour: str) -> str:
        return f"{self.base_url}/{behaviour}"


def _make_handler(server: OpenCostServer) -> type[BaseHTTPRequestHandler]:
    bodies = {
        "ok": (200, "application/json", ALLOCATION_JSON.read_bytes()),
        "missing": (404, "text/plain", b"404 page not found\n"),
        "broken": (500, "text/plain", b"prometheus query failed\n"),
        "html": (200, "text/html", b"<!doctype html><title>OpenCost UI</title>"),
        "refusing": (
            200,
            "application/json",
            b'{"code": 400, "message": "error parsing window"}',
        ),
        "empty": (200, "application/json", b'{"code": 200, "data": []}'),
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            server.paths.append(self.path)
            behaviour = self.path.split("/")[1]
            if behaviour == "slow":
                server.release.wait(30)
                behaviour = "ok"
            status, content_type, body = bodies.get(behaviour, bodies["missing"])
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep the test output to the tests

    return Handler


@pytest.fixture
def opencost_api() -> Iterator[OpenCostServer]:
    state = OpenCostServer(base_url="")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(state))
    httpd.daemon_threads = True
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    # A short poll keeps shutdown quick at teardown.
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join()
