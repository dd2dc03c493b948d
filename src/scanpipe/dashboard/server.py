"""The dashboard's HTTP server: static files and JSON from the ledger.

A ThreadingHTTPServer from the standard library is enough for a page that a
handful of people open on the machine that runs the pipeline; it binds
127.0.0.1 unless told otherwise, since the ledger names scan keys.
"""

from __future__ import annotations

import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from scanpipe.errors import ScanpipeError
from scanpipe.ledger import Ledger

log = logging.getLogger(__name__)

_STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}


class DashboardServer:
    """Serves one run directory's dashboard until ``stop``."""

    def __init__(
        self,
        run_dir: Path,
        *,
        address: str = "127.0.0.1",
        port: int = 8765,
        report_options: dict[str, Any] | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.report_options = report_options or {}
        self._ledger_lock = threading.Lock()
        self._ledger: Ledger | None = None
        handler = _make_handler(self)
        self.httpd = ThreadingHTTPServer((address, port), handler)
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}/"

    def start(self) -> DashboardServer:
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="dashboard", daemon=True
        )
        self._thread.start()
        log.info("dashboard serving url=%s", self.url)
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._ledger is not None:
            self._ledger.close()

    def ledger(self) -> Ledger:
        with self._ledger_lock:
            if self._ledger is None:
                self._ledger = Ledger(self.run_dir / "ledger.db")
            return self._ledger

    # -- data ------------------------------------------------------------------

    def report(self, since: float | None) -> dict[str, Any]:
        from scanpipe.finops.report import build_report

        return build_report(self.ledger(), since=since, **self.report_options)

    def timeline(self, since: float | None) -> dict[str, Any]:
        from scanpipe.finops.report import cost_rate_usd_per_hour

        ledger = self.ledger()
        samples = ledger.samples(since=since)
        return {
            "samples": [
                {
                    "at": s.at,
                    "queued": s.visible + s.in_flight,
                    "visible": s.visible,
                    "in_flight": s.in_flight,
                    "dead_letters": s.dead_letters,
                    "workers_desired": s.workers_desired,
                    "workers_running": s.workers_running,
                    "workers_busy": s.workers_busy,
                    "cost_rate_usd_per_hour": cost_rate_usd_per_hour(
                        s.workers_running, **self.report_options
                    ),
                }
                for s in samples
            ],
            "scaling_events": [
                {
                    "at": e.at,
                    "from": e.from_replicas,
                    "to": e.to_replicas,
                    "reason": e.reason,
                }
                for e in ledger.scaling_events()
                if since is None or e.at >= since
            ],
            "latencies_seconds": [
                s.end_to_end_seconds
                for s in ledger.scans(since=since)
                if s.outcome == "done" and s.end_to_end_seconds is not None
            ],
        }


def serve(
    run_dir: Path,
    *,
    address: str = "127.0.0.1",
    port: int = 8765,
    report_options: dict[str, Any] | None = None,
) -> DashboardServer:
    """Start serving the dashboard of ``run_dir`` in a background thread."""
    return DashboardServer(
        run_dir, address=address, port=port, report_options=report_options
    ).start()


def _make_handler(server: DashboardServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = parse_qs(parts.query)
            try:
                since = float(query["since"][0]) if "since" in query else None
            except ValueError:
                self._send_json({"error": "since must be epoch seconds"}, 400)
                return
            if parts.path in _STATIC:
                name, content_type = _STATIC[parts.path]
                body = (
                    resources.files("scanpipe.dashboard")
                    .joinpath(f"static/{name}")
                    .read_bytes()
                )
                self._send(body, content_type)
            elif parts.path == "/api/report":
                self._send_data(lambda: server.report(since))
            elif parts.path == "/api/timeline":
                self._send_data(lambda: server.timeline(since))
            else:
                self._send_json({"error": f"no such page: {parts.path}"}, 404)

        def _send_data(self, build: Any) -> None:
            try:
                self._send_json(build(), 200)
            except ScanpipeError as exc:
                self._send_json({"error": str(exc)}, 500)

        def _send_json(self, doc: Any, status: int) -> None:
            body = json.dumps(doc, default=str).encode("utf-8")
            self._send(body, "application/json", status)

        def _send(self, body: bytes, content_type: str, status: int = 200) -> None:
            self.send_response(HTTPStatus(status))
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("dashboard request " + format, *args)

    return Handler
