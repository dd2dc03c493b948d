"""``scanpipe report``: what a run cost, per scan and per month.

The pricing options are shared with ``up``, ``demo`` and ``dashboard``
through :func:`pricing_options`, so that every view of a run prices it the
same way; the work is done in :mod:`scanpipe.finops.report`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from scanpipe import config
from scanpipe.finops.catalog import DEFAULT_INSTANCE_TYPE


def pricing_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--instance-type``, ``--prices`` and ``--spot`` to a command.

    The command receives them as one ``pricing`` keyword: a dict with
    ``instance_type``, ``prices_file`` and ``use_spot``.
    """

    @functools.wraps(function)
    def wrapper(
        *args: Any,
        instance_type: str,
        prices_file: Path | None,
        use_spot: bool,
        **kwargs: Any,
    ) -> Any:
        pricing = {
            "instance_type": instance_type,
            "prices_file": prices_file,
            "use_spot": use_spot,
        }
        return function(*args, pricing=pricing, **kwargs)

    options = (
        click.option(
            "--instance-type",
            envvar="SCANPIPE_INSTANCE_TYPE",
            default=DEFAULT_INSTANCE_TYPE,
            show_default=True,
            help="Instance type each worker is priced as.",
        ),
        click.option(
            "--prices",
            "prices_file",
            envvar="SCANPIPE_PRICES",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            default=None,
            help="JSON or TOML file that overrides the built-in price catalog.",
        ),
        click.option(
            "--spot",
            "use_spot",
            envvar="SCANPIPE_SPOT",
            is_flag=True,
            help="Price worker nodes at their spot price.",
        ),
    )
    decorated: Callable[..., Any] = wrapper
    for option in reversed(options):
        decorated = option(decorated)
    return decorated


def build_pricing(pricing: dict[str, Any]) -> Any:
    """The :class:`~scanpipe.finops.catalog.Pricing` the options describe."""
    from scanpipe.finops.catalog import Pricing, load_catalog

    return Pricing(
        catalog=load_catalog(pricing["prices_file"]),
        instance_type=pricing["instance_type"],
        use_spot=pricing["use_spot"],
    )


@click.command()
@click.option(
    "--dir",
    "run_dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="SCANPIPE_DIR",
    default=config.DEFAULT_RUN_DIR,
    show_default=True,
    help="Run directory of the embedded stack.",
)
@click.option(
    "--since",
    default=None,
    help="Start of the window: a duration back from now (30m, 2h, 1d) or an "
    "ISO 8601 time [default: the run's first activity].",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option(
    "--opencost",
    "opencost_url",
    envvar="SCANPIPE_OPENCOST_URL",
    default=None,
    help="OpenCost API URL: price the window with the cluster's measured "
    "allocations instead of the catalog.",
)
@click.option(
    "--opencost-workload",
    default="scanpipe",
    show_default=True,
    help="scanpipe's allocation name in OpenCost (namespace or label value).",
)
@click.option(
    "--opencost-aggregate",
    default="namespace",
    show_default=True,
    help="OpenCost aggregation: 'namespace' or 'label:<name>'.",
)
@pricing_options
def report(
    run_dir: Path,
    since: str | None,
    as_json: bool,
    opencost_url: str | None,
    opencost_workload: str,
    opencost_aggregate: str,
    pricing: dict[str, Any],
) -> None:
    """What the run cost: per scan, per hour and per month, and its efficiency."""
    from scanpipe.finops.report import report_command_output

    text, doc = report_command_output(
        run_dir,
        since=since,
        opencost_url=opencost_url,
        opencost_workload=opencost_workload,
        opencost_aggregate=opencost_aggregate,
        instance_type=pricing["instance_type"],
        prices_file=pricing["prices_file"],
        use_spot=pricing["use_spot"],
    )
    if as_json:
        click.echo(json.dumps(doc, sort_keys=True, default=str))
    else:
        click.echo(text)
