"""The built-in dashboard: the bill per scan and the 0 -> N -> 0 picture, offline.

``serve(run_dir)`` starts a small HTTP server on 127.0.0.1 that serves one
page and two JSON endpoints read from the run directory's ledger:

- ``/api/report``: exactly what ``scanpipe report --json`` prints;
- ``/api/timeline``: queue depth, workers and cost rate per autoscaler tick,
  scaling events, and the end-to-end seconds of every finished scan.

Everything the page needs ships in ``static/``: no CDN, no fonts, no network.
"""

from scanpipe.dashboard.server import DashboardServer, serve

__all__ = ["DashboardServer", "serve"]
