"""The ``scanpipe`` command line: thin wrappers that parse, call the library, print.

Errors scanpipe raises on purpose print as ``error: <sentence>`` with exit
status 1; ``--debug`` shows the traceback instead. Commands that report take
``--json`` and then print exactly one JSON object on stdout.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from scanpipe import __version__, config, logs
from scanpipe.cli_aws import aws
from scanpipe.cli_events import events
from scanpipe.cli_models import evaluate, export, tradeoff
from scanpipe.cli_report import build_pricing, pricing_options, report
from scanpipe.errors import ConfigError, ScanpipeError

log = logging.getLogger(__name__)

_DIR_OPTION = click.option(
    "--dir",
    "run_dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="SCANPIPE_DIR",
    default=config.DEFAULT_RUN_DIR,
    show_default=True,
    help="Run directory of the embedded stack.",
)
_MODEL_OPTION = click.option(
    "--model",
    envvar="SCANPIPE_MODEL",
    default=config.DEFAULT_MODEL,
    show_default=True,
    help="Model spec: builtin, onnx:PATH, nnunet:PATH, threshold (options after ?).",
)


def _metrics_options(default_port: int | None, when_unset: str) -> Any:
    """``--metrics-port`` and ``--metrics-address`` with a command's default."""

    def decorate(function: Any) -> Any:
        function = click.option(
            "--metrics-address",
            envvar="SCANPIPE_METRICS_ADDRESS",
            default="127.0.0.1",
            show_default=True,
            help="Address of /metrics; 0.0.0.0 to be scraped from other hosts.",
        )(function)
        return click.option(
            "--metrics-port",
            envvar="SCANPIPE_METRICS_PORT",
            default=default_port,
            type=click.IntRange(0, 65535),
            help=f"Serve Prometheus metrics at this port (0: any free port) "
            f"[default: {when_unset}].",
        )(function)

    return decorate


def _print_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=None, sort_keys=True, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="scanpipe")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.option(
    "--log-level",
    envvar="SCANPIPE_LOG_LEVEL",
    default="INFO",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
def cli(debug: bool, log_level: str) -> None:
    """Batch inference for 3D scans: queue-driven workers that scale from zero."""
    logs.configure("DEBUG" if debug else log_level)


cli.add_command(aws)
cli.add_command(export)
cli.add_command(evaluate)
cli.add_command(tradeoff)
cli.add_command(events)
cli.add_command(report)


# -- data ----------------------------------------------------------------------


@cli.command()
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--count", default=4, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--shape",
    nargs=3,
    type=click.IntRange(16, 1024),
    default=(128, 128, 96),
    show_default=True,
)
@click.option(
    "--spacing",
    type=click.FloatRange(0.2, 0.5),
    default=0.4,
    show_default=True,
    help="Voxel size in millimetres (isotropic).",
)
def phantom(
    out_dir: Path, count: int, seed: int, shape: tuple[int, int, int], spacing: float
) -> None:
    """Write synthetic CBCT phantoms and their labels in nnU-Net's raw layout."""
    from scanpipe.imaging.phantom import write_dataset

    paths = write_dataset(out_dir, count=count, seed=seed, shape=shape, spacing=spacing)
    click.echo(f"wrote {len(paths)} phantoms to {out_dir}")


# -- the embedded stack ----------------------------------------------------------


@cli.command()
@click.option("--scans", default=8, show_default=True, type=click.IntRange(1))
@click.option(
    "--dir",
    "run_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Run directory [default: a new runs/demo-<time>].",
)
@click.option("--max-workers", default=2, show_default=True, type=click.IntRange(1))
@_MODEL_OPTION
@click.option("--seed", default=None, type=int, help="Phantom seed [default: random].")
@click.option("--shape", nargs=3, type=click.IntRange(16, 1024), default=(128, 128, 96))
@click.option(
    "--cooldown",
    default=5.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Seconds without work before workers scale to zero.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pricing_options
@_metrics_options(0, "any free port")
def demo(
    scans: int,
    run_dir: Path | None,
    max_workers: int,
    model: str,
    seed: int | None,
    shape: tuple[int, int, int],
    cooldown: float,
    as_json: bool,
    pricing: dict[str, Any],
    metrics_port: int,
    metrics_address: str,
) -> None:
    """Make phantoms, segment them with workers that scale 0 -> N -> 0, summarise."""
    from scanpipe.finops.report import build_report, format_report
    from scanpipe.imaging.phantom import write_dataset
    from scanpipe.stack import EmbeddedStack, RunDir
    from scanpipe.summary import summarize

    prices = build_pricing(pricing)
    if run_dir is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = Path("runs") / f"demo-{stamp}"
    seed = seed if seed is not None else int.from_bytes(os.urandom(4), "little")
    settings = _stack_settings(
        model, max_workers, cooldown, prices, metrics_port, metrics_address
    )
    stack = EmbeddedStack(RunDir(run_dir), settings)
    started = time.time()
    # In a new run directory the bill covers the run from its first activity,
    # as `scanpipe report --dir` and the dashboard count it; in one used
    # before, it starts now so that earlier runs stay out of it.
    cost_since = started if stack.ledger.workers() else None

    images = write_dataset(
        run_dir / "phantoms", count=scans, seed=seed, shape=shape, spacing=0.4
    )
    for image in images:
        _drop_into(stack.run_dir.inbox, image)
    log.info("demo started dir=%s scans=%d seed=%d", run_dir, scans, seed)

    with _StackProgress(scans, enabled=not as_json) as progress:
        _run_stack(stack, until_idle=True, on_tick=progress.update)
    summary = summarize(stack.ledger, stack.queue, since=started)
    cost = build_report(stack.ledger, since=cost_since, pricing=prices)
    stack.close()

    if as_json:
        doc = summary.to_json()
        doc["dir"] = str(run_dir)
        doc["cost"] = cost
        _print_json(doc)
    else:
        _print_summary(summary, run_dir)
        click.echo("")
        click.echo(format_report(cost))


@cli.command()
@_DIR_OPTION
@_MODEL_OPTION
@click.option("--max-workers", default=2, show_default=True, type=click.IntRange(1))
@click.option(
    "--cooldown",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Seconds without work before workers scale to zero.",
)
@click.option(
    "--dashboard-port",
    default=8765,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Serve the dashboard on 127.0.0.1 at this port (0: no dashboard).",
)
@pricing_options
@_metrics_options(9108, "9108")
def up(
    run_dir: Path,
    model: str,
    max_workers: int,
    cooldown: float,
    dashboard_port: int,
    pricing: dict[str, Any],
    metrics_port: int,
    metrics_address: str,
) -> None:
    """Run the embedded stack until Ctrl-C: drop scans in DIR/inbox, find masks
    in DIR/outbox."""
    from scanpipe.dashboard import serve
    from scanpipe.stack import EmbeddedStack, RunDir

    prices = build_pricing(pricing)
    stack = EmbeddedStack(
        RunDir(run_dir),
        _stack_settings(
            model, max_workers, cooldown, prices, metrics_port, metrics_address
        ),
    )
    report_options = {"pricing": prices}
    server = (
        serve(stack.run_dir.root, port=dashboard_port, report_options=report_options)
        if dashboard_port
        else None
    )
    click.echo(
        f"scanpipe is up: drop scans into {stack.run_dir.inbox}/, masks appear in "
        f"{stack.run_dir.outbox}/ (Ctrl-C to stop)",
        err=True,
    )
    if server is not None:
        click.echo(f"dashboard at {server.url}", err=True)
    click.echo(f"metrics at {stack.metrics_url}", err=True)
    _run_stack(stack, until_idle=False)
    if server is not None:
        server.stop()
    stack.close()


@cli.command()
@click.argument(
    "files",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@_DIR_OPTION
@click.option("--prefix", default="", help="Key prefix for the submitted objects.")
def submit(files: tuple[Path, ...], run_dir: Path, prefix: str) -> None:
    """Put scans into the input store now (an event is queued for each)."""
    from scanpipe.events import QueueNotifier
    from scanpipe.queue import open_queue
    from scanpipe.stack import RunDir
    from scanpipe.storage.local import LocalStore

    run = RunDir(run_dir).create()
    queue = open_queue(run.queue_url())
    store = LocalStore(run.input, bucket="input")
    store.add_put_listener(QueueNotifier(queue))
    for path in files:
        info = store.put_file(prefix + path.name, path)
        click.echo(f"submitted {info.key} size={info.size} etag={info.etag}")
    queue.close()


@cli.command()
@_DIR_OPTION
@click.option(
    "--address",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind; 0.0.0.0 exposes the ledger's data to the network.",
)
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535))
@pricing_options
def dashboard(run_dir: Path, address: str, port: int, pricing: dict[str, Any]) -> None:
    """Serve the dashboard of a run directory until Ctrl-C."""
    from scanpipe.dashboard import serve

    run = _existing_run(run_dir)
    server = serve(
        run.root,
        address=address,
        port=port,
        report_options={"pricing": build_pricing(pricing)},
    )
    click.echo(f"dashboard at {server.url} (Ctrl-C to stop)", err=True)
    stop = threading.Event()
    _on_stop_signals(stop)
    stop.wait()
    server.stop()


@cli.command()
@_DIR_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def status(run_dir: Path, as_json: bool) -> None:
    """Queue depths, workers and dead letters of a run directory."""
    from scanpipe.ledger import Ledger
    from scanpipe.queue import open_queue
    from scanpipe.summary import summarize

    run = _existing_run(run_dir)
    queue = open_queue(run.queue_url())
    ledger = Ledger(run.ledger_path)
    summary = summarize(ledger, queue)
    depth = queue.depth()
    doc = {
        "visible": depth.visible,
        "in_flight": depth.in_flight,
        "delayed": depth.delayed,
        "dead_letters": summary.dead_letters,
        "workers": summary.workers,
        "scans_done": summary.scans_done,
        "scans_failed": summary.scans_failed,
        "inbox_pending": sum(1 for p in run.inbox.rglob("*") if p.is_file()),
    }
    if as_json:
        _print_json(doc)
    else:
        for name, value in doc.items():
            click.echo(f"{name:14} {value}")


@cli.group()
def dlq() -> None:
    """Inspect and redrive the dead-letter queue."""


def _queue_option(function: Any) -> Any:
    function = click.option(
        "--queue", "queue_url", default=None, help="Queue URL [default: the run dir's]."
    )(function)
    return _DIR_OPTION(function)


@dlq.command("list")
@_queue_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def dlq_list(run_dir: Path, queue_url: str | None, as_json: bool) -> None:
    """List dead letters with their reasons."""
    from scanpipe.events import ObjectEvent, parse_message
    from scanpipe.queue.base import DETAIL_ATTRIBUTE, REASON_ATTRIBUTE

    queue = _open_queue(run_dir, queue_url)
    dead = queue.dead_letter_queue()
    if dead is None:
        raise ConfigError(f"The queue {queue.url} has no dead-letter queue.")
    for message in dead.peek(1000):
        try:
            keys = [
                e.key for e in parse_message(message.body) if isinstance(e, ObjectEvent)
            ]
        except ScanpipeError:
            keys = []
        doc = {
            "message_id": message.message_id,
            "keys": keys,
            "reason": message.attributes.get(REASON_ATTRIBUTE, "max_receive_count"),
            "detail": message.attributes.get(DETAIL_ATTRIBUTE, ""),
            "sent_at": message.sent_at,
        }
        if as_json:
            _print_json(doc)
        else:
            click.echo(
                f"{doc['message_id']}  {doc['reason']:18} {', '.join(keys) or '-'}"
                f"  {doc['detail']}"
            )


@dlq.command("redrive")
@_queue_option
@click.option("--max", "max_messages", default=None, type=click.IntRange(1))
def dlq_redrive(run_dir: Path, queue_url: str | None, max_messages: int | None) -> None:
    """Move dead letters back onto the queue for another try."""
    queue = _open_queue(run_dir, queue_url)
    moved = queue.redrive(max_messages)
    click.echo(f"redrove {moved} messages to {queue.url}")


# -- single processes ------------------------------------------------------------


@cli.command()
@click.option("--queue", "queue_url", envvar="SCANPIPE_QUEUE", required=True)
@click.option("--input", "input_url", envvar="SCANPIPE_INPUT", required=True)
@click.option("--output", "output_url", envvar="SCANPIPE_OUTPUT", required=True)
@_MODEL_OPTION
@click.option("--worker-id", envvar="SCANPIPE_WORKER_ID", default=None)
@click.option(
    "--ledger",
    "ledger_path",
    envvar="SCANPIPE_LEDGER",
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Record worker lifetime and scans into this ledger file.",
)
@click.option("--wait-seconds", default=20.0, type=click.FloatRange(0, 20))
@click.option("--visibility-timeout", default=None, type=click.FloatRange(1, 43200))
@click.option(
    "--stop-grace",
    envvar="SCANPIPE_STOP_GRACE_SECONDS",
    default=30.0,
    type=click.FloatRange(0),
)
@click.option(
    "--max-voxels", envvar="SCANPIPE_MAX_VOXELS", default=None, type=click.IntRange(1)
)
@click.option(
    "--threads", envvar="SCANPIPE_THREADS", default=None, type=click.IntRange(1)
)
@click.option("--max-messages", default=None, type=click.IntRange(1))
@click.option("--exit-when-idle", is_flag=True, help="Exit once the queue is empty.")
@pricing_options
@_metrics_options(None, "no endpoint")
def worker(
    queue_url: str,
    input_url: str,
    output_url: str,
    model: str,
    worker_id: str | None,
    ledger_path: Path | None,
    wait_seconds: float,
    visibility_timeout: float | None,
    stop_grace: float,
    max_voxels: int | None,
    threads: int | None,
    max_messages: int | None,
    exit_when_idle: bool,
    pricing: dict[str, Any],
    metrics_port: int | None,
    metrics_address: str,
) -> None:
    """One worker process: the container entrypoint of the cloud form."""
    if threads:
        config.set_thread_count(threads)
    from scanpipe.imaging.nifti import ScanLimits
    from scanpipe.ledger import Ledger
    from scanpipe.models import load_segmenter
    from scanpipe.queue import open_queue
    from scanpipe.storage import open_store
    from scanpipe.telemetry import start_worker_telemetry
    from scanpipe.worker.loop import Worker, WorkerSettings

    settings = WorkerSettings(
        wait_seconds=wait_seconds,
        visibility_timeout=visibility_timeout,
        stop_grace_seconds=stop_grace,
        max_messages=max_messages,
        exit_when_idle=exit_when_idle,
    )
    if worker_id:
        settings.worker_id = worker_id
    if max_voxels:
        settings.limits = ScanLimits(max_voxels=max_voxels)

    telemetry = start_worker_telemetry(
        metrics_address, metrics_port, pricing=build_pricing(pricing)
    )
    ledger = Ledger(ledger_path) if ledger_path else None
    if ledger is not None:
        ledger.worker_started(settings.worker_id, pid=os.getpid())
    queue = open_queue(queue_url)
    input_store = open_store(input_url)
    output_store = open_store(output_url)
    load_started = time.monotonic()
    try:
        segmenter = load_segmenter(model)
    except ScanpipeError:
        if ledger is not None:
            ledger.worker_stopped(settings.worker_id, "model_failed")
        if telemetry is not None:
            telemetry.stopped()
        raise
    if telemetry is not None:
        telemetry.model_loaded(time.monotonic() - load_started)
    if ledger is not None:
        ledger.model_loaded(settings.worker_id, segmenter.model_id)
    log.info("model loaded worker=%s model=%s", settings.worker_id, segmenter.model_id)

    code = Worker(
        queue=queue,
        input_store=input_store,
        output_store=output_store,
        segmenter=segmenter,
        settings=settings,
        ledger=ledger,
        metrics=telemetry,
    ).run()
    sys.exit(code)


@cli.command()
@click.argument(
    "input_path", type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.argument("output_path", type=click.Path(dir_okay=False, path_type=Path))
@_MODEL_OPTION
@click.option("--max-voxels", default=None, type=click.IntRange(1))
@click.option("--json", "as_json", is_flag=True, help="Print label statistics as JSON.")
def predict(
    input_path: Path,
    output_path: Path,
    model: str,
    max_voxels: int | None,
    as_json: bool,
) -> None:
    """Segment one scan file into a mask file, without any queue."""
    from scanpipe.imaging.nifti import ScanLimits, load_scan, write_mask
    from scanpipe.models import load_segmenter
    from scanpipe.worker.outputs import label_statistics

    if not output_path.name.endswith((".nii", ".nii.gz")):
        raise ConfigError(
            f"Expected the mask's path to end in .nii or .nii.gz, but got "
            f"{output_path}."
        )
    # Made before the model loads: a bad output path should cost nothing.
    output_path.parent.mkdir(parents=True, exist_ok=True)
    segmenter = load_segmenter(model)
    limits = ScanLimits(max_voxels=max_voxels) if max_voxels else ScanLimits()
    volume = load_scan(input_path, limits)
    result = segmenter.segment(volume)
    write_mask(result.labels, volume, output_path)
    stats = label_statistics(result.labels, volume, segmenter.labels)
    if as_json:
        _print_json(
            {"model": segmenter.model_id, "labels": stats, "seconds": result.seconds}
        )
    else:
        for name, values in stats.items():
            click.echo(
                f"{name:8} {values['voxels']:>10} voxels {values['volume_ml']:9.2f} ml"
            )
        click.echo(f"wrote {output_path}")


# -- helpers -----------------------------------------------------------------------


def _stack_settings(
    model: str,
    max_workers: int,
    cooldown: float,
    pricing: Any,
    metrics_port: int | None,
    metrics_address: str,
) -> Any:
    from scanpipe.autoscale import ScalingPolicy
    from scanpipe.stack import StackSettings

    return StackSettings(
        model=model,
        max_workers=max_workers,
        pricing=pricing,
        metrics_port=metrics_port,
        metrics_address=metrics_address,
        policy=ScalingPolicy(
            polling_interval_seconds=1.0,
            cooldown_period_seconds=cooldown,
            target_per_replica=2,
            max_replicas=max_workers,
            scale_down_stabilization_seconds=min(cooldown, 5.0),
        ),
    )


def _run_stack(stack: Any, *, until_idle: bool, on_tick: Any = None) -> None:
    stop = threading.Event()
    _on_stop_signals(stop)
    stack.run(stop, until_idle=until_idle, on_tick=on_tick)


def _on_stop_signals(stop: threading.Event) -> None:
    import signal

    def _stop(signum: int, frame: object) -> None:
        log.info("stopping signal=%s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)


def _existing_run(run_dir: Path) -> Any:
    from scanpipe.stack import RunDir

    run = RunDir(run_dir)
    if not run.queue_path.exists():
        raise ConfigError(
            f"Expected a run directory with a queue.db, but {run_dir} has none; "
            "start one with `scanpipe up --dir` or `scanpipe demo --dir`."
        )
    return run


def _open_queue(run_dir: Path, queue_url: str | None) -> Any:
    from scanpipe.queue import open_queue

    if queue_url:
        return open_queue(queue_url)
    return open_queue(_existing_run(run_dir).queue_url())


def _drop_into(inbox: Path, image: Path) -> None:
    # Copy under a partial name, then rename: what a careful uploader does.
    partial = inbox / f"{image.name}.part"
    shutil.copyfile(image, partial)
    os.replace(partial, inbox / image.name)


class _StackProgress:
    """A live line of progress on a terminal: scans done, queue, workers."""

    def __init__(self, total: int, *, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled and sys.stderr.isatty()
        self._progress: Any = None

    def __enter__(self) -> _StackProgress:
        if self.enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("[bold]scans"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task("", total=self.total)
        return self

    def update(self, stack: Any) -> None:
        if self._progress is None:
            return
        depth = stack.queue.depth()
        done = len({s.input_key for s in stack.ledger.scans() if s.outcome != "retry"})
        self._progress.update(
            self._task,
            completed=min(done, self.total),
            description=(
                f"queue={depth.visible} in_flight={depth.in_flight} "
                f"workers={len(stack.supervisor.running)}"
            ),
        )

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


def _print_summary(summary: Any, run_dir: Path) -> None:
    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f} s"

    click.echo(f"run directory   {run_dir}")
    click.echo(f"scans done      {summary.scans_done}")
    click.echo(f"scans failed    {summary.scans_failed}")
    click.echo(f"dead letters    {summary.dead_letters}")
    click.echo(f"P50 end-to-end  {seconds(summary.p50_seconds)}")
    click.echo(f"P95 end-to-end  {seconds(summary.p95_seconds)}")
    click.echo(f"peak workers    {summary.peak_workers}")
    click.echo(f"scaling events  {len(summary.scaling_events)}")
    for event in summary.scaling_events:
        at = datetime.fromtimestamp(event["at"]).strftime("%H:%M:%S")
        click.echo(f"  {at}  {event['from']} -> {event['to']}  {event['reason']}")


def main() -> None:
    """Console entry point: run the CLI, turning scanpipe errors into one line."""
    debug = "--debug" in sys.argv[1:]
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ScanpipeError as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except OSError as exc:
        # A file the user named cannot be read or written (permissions, a
        # full disk): their problem to fix, so one line, not a traceback.
        if debug:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        click.echo(f"error: {exc.strerror or exc}{where}", err=True)
        sys.exit(1)
