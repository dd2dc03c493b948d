"""The built-in dashboard in a real headless Chromium: it loads offline and its
numbers are the ones ``scanpipe report --json`` gives for the same run."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

FORMATS = {
    "count": lambda v: str(round(v)),
    "seconds": lambda v: f"{v:.1f} s",
    "usd": lambda v: f"${v:.4f}",
    "usd2": lambda v: f"${v:.2f}",
    "ratio": lambda v: f"{100 * v:.1f} %",
}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scanpipe", *args],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "SCANPIPE_LOG_LEVEL": "WARNING"},
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("dash") / "run"
    result = run_cli(
        "demo",
        "--scans",
        "4",
        "--shape",
        "48",
        "48",
        "32",
        "--cooldown",
        "1",
        "--dir",
        str(run_dir),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    return run_dir


@pytest.fixture(scope="module")
def dashboard_url(finished_run: Path) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "scanpipe",
            "dashboard",
            "--dir",
            str(finished_run),
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise AssertionError("the dashboard server did not start") from None
            time.sleep(0.1)
    yield url
    process.terminate()
    process.wait(10)


def lookup(doc: dict, path: str) -> object:
    value: object = doc
    for part in path.split("."):
        assert isinstance(value, dict), f"{path} is not in the report"
        value = value[part]
    return value


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_the_dashboard_shows_the_numbers_of_the_report(
    finished_run: Path, dashboard_url: str
) -> None:
    playwright_api = pytest.importorskip("playwright.sync_api")
    report = json.loads(run_cli("report", "--dir", str(finished_run), "--json").stdout)
    requests_off_machine: list[str] = []

    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        page = browser.new_page(viewport={"width": 1100, "height": 1400})
        page.on(
            "request",
            lambda r: (
                None
                if r.url.startswith(dashboard_url)
                else requests_off_machine.append(r.url)
            ),
        )
        page.goto(dashboard_url)
        page.wait_for_selector("body[data-ready=true]", timeout=20_000)

        fields = page.eval_on_selector_all(
            "[data-field]",
            "els => els.map(e => [e.dataset.field, e.dataset.format, "
            "e.dataset.value, e.textContent])",
        )
        series = page.eval_on_selector_all(
            "#timeline path[data-series]", "els => els.map(e => e.dataset.series)"
        )
        bars = page.eval_on_selector_all("#latency rect", "els => els.length")
        window_text = page.inner_text("#window")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        browser.close()

    assert requests_off_machine == [], "the page must work offline"
    assert len(fields) >= 15
    for field, fmt, raw, text in fields:
        expected = lookup(report, field)
        assert json.loads(raw) == expected, field
        assert text == ("n/a" if expected is None else FORMATS[fmt](expected)), field
    assert report["scans"] == 4
    assert sorted(series) == ["cost", "queued", "workers"]
    assert bars >= 1
    assert "Invalid" not in window_text and "(0.00 h)" in window_text
