"""``scanpipe export``, ``evaluate`` and ``tradeoff``: models, their quality and cost.

Kept apart from :mod:`scanpipe.cli` so that the pipeline's commands never
import what these need; the work is done in :mod:`scanpipe.models.export`,
:mod:`scanpipe.evaluation` and :mod:`scanpipe.models.tradeoff`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click

from scanpipe import config
from scanpipe.cli_report import build_pricing, pricing_options


def _print_json(doc: Any) -> None:
    click.echo(json.dumps(doc, sort_keys=True, default=str))


def _csv(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


@click.command("export")
@click.argument(
    "model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--folds",
    default=None,
    help="Folds to export, e.g. 0,1,2 [default: every fold with the checkpoint].",
)
@click.option("--checkpoint", default="checkpoint_final.pth", show_default=True)
@click.option(
    "--trust",
    is_flag=True,
    help="Allow checkpoints that need full unpickling (can run code they hold).",
)
@click.option("--no-verify", is_flag=True, help="Skip comparing the export with torch.")
def export(
    model_dir: Path,
    out_dir: Path,
    folds: str | None,
    checkpoint: str,
    trust: bool,
    no_verify: bool,
) -> None:
    """Convert an nnU-Net v2 model folder into the engine's format (onnx:OUT_DIR).

    All folds go into one network that averages them, as nnU-Net's ensemble
    does. Needs the nnunet extra: pip install 'scanpipe[nnunet]'.
    """
    from scanpipe.models.engine.manifest import read_manifest
    from scanpipe.models.export import export_model

    export_model(
        model_dir,
        out_dir,
        folds=_csv(folds) if folds else None,
        checkpoint=checkpoint,
        trust=trust,
        verify=not no_verify,
    )
    manifest = read_manifest(out_dir)
    size_kib = (out_dir / manifest.network).stat().st_size / 1024
    click.echo(
        f"exported folds {','.join(manifest.folds)} of {model_dir} to {out_dir} "
        f"({manifest.network}, {size_kib:.0f} KiB); run it with --model "
        f"onnx:{out_dir}"
    )


@click.command()
@click.argument(
    "pred_dir", type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.argument("gt_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def evaluate(pred_dir: Path, gt_dir: Path, as_json: bool) -> None:
    """Dice and HD95 (mm) per label, per case and mean, of predicted masks.

    Every NAME.nii.gz in GT_DIR is compared with PRED_DIR/NAME.nii.gz.
    """
    from scanpipe.evaluation import evaluate_folders, finite_or_none, mean_scores

    scores = evaluate_folders(pred_dir, gt_dir)
    mean = mean_scores(scores)
    if as_json:
        _print_json(
            {
                "cases": [
                    {
                        "case": s.case,
                        "dice": s.dice,
                        "hd95_mm": {k: finite_or_none(v) for k, v in s.hd95_mm.items()},
                    }
                    for s in scores
                ],
                "mean": {
                    name: {"dice": m["dice"], "hd95_mm": finite_or_none(m["hd95_mm"])}
                    for name, m in mean.items()
                },
            }
        )
        return

    names = list(mean)
    header = "".join(f"  {n + ' Dice':>12}  {n + ' HD95':>12}" for n in names)
    click.echo(f"{'case':24}{header}")
    rows = [(s.case, s.dice, s.hd95_mm) for s in scores]
    rows.append(
        (
            "mean",
            {n: m["dice"] for n, m in mean.items()},
            {n: m["hd95_mm"] for n, m in mean.items()},
        )
    )
    for case, dice, hd95 in rows:
        cells = "".join(f"  {dice[n]:12.4f}  {_mm(hd95[n]):>12}" for n in names)
        click.echo(f"{case:24}{cells}")


@click.command()
@click.argument(
    "cases_dir", type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.option(
    "--model",
    envvar="SCANPIPE_MODEL",
    default=config.DEFAULT_MODEL,
    show_default=True,
    help="builtin, onnx:PATH or nnunet:PATH, with options after ?.",
)
@click.option(
    "--backends",
    default=None,
    help="engine, nnunet or both [default: every backend the model runs on].",
)
@click.option("--mirror", default="off,on", show_default=True, help="off, on or both.")
@click.option(
    "--steps", default="0.5", show_default=True, help="Tile steps, e.g. 0.5,0.75."
)
@pricing_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def tradeoff(
    cases_dir: Path,
    model: str,
    backends: str | None,
    mirror: str,
    steps: str,
    pricing: dict[str, Any],
    as_json: bool,
) -> None:
    """Quality against cost of a model's settings over cases with ground truth.

    CASES_DIR is nnU-Net's raw layout (imagesTr/NAME_0000.nii.gz and
    labelsTr/NAME.nii.gz), as `scanpipe phantom` writes. Seconds are measured
    here; cost per scan is those seconds at the worker instance's price.
    """
    from scanpipe.models.tradeoff import (
        Grid,
        TradeoffRow,
        available_backends,
        run_tradeoff,
    )

    prices = build_pricing(pricing)
    grid = Grid(
        backends=tuple(_csv(backends)) if backends else available_backends(model),
        mirror=tuple(_mirror_values(mirror)),
        steps=tuple(_step_values(steps)),
    )

    def progress(row: TradeoffRow) -> None:
        if not as_json:
            click.echo(f"measured {_setting(row)}", err=True)

    rows = run_tradeoff(
        cases_dir, model, grid, usd_per_hour=prices.worker_usd_per_hour, on_row=progress
    )
    if as_json:
        _print_json(
            {
                "instance_type": prices.instance_type,
                "usd_per_hour": prices.worker_usd_per_hour,
                "settings": [row.to_json() for row in rows],
            }
        )
        return

    names = list(rows[0].dice)
    dice_header = "".join(f"  {n + ' Dice':>11}" for n in names)
    click.echo(f"{'backend':8} {'mirror':6} {'step':>5}{dice_header}  s/scan  $/scan")
    for row in rows:
        dice = "".join(f"  {row.dice[n]:11.4f}" for n in names)
        cost = "-" if row.cost_usd_per_scan is None else f"{row.cost_usd_per_scan:.5f}"
        click.echo(
            f"{row.backend:8} {'on' if row.mirror else 'off':6} {row.step:5.2f}"
            f"{dice}  {row.seconds_per_scan:6.2f}  {cost}"
        )
    click.echo(
        f"cost per scan: the seconds measured on this machine, priced at "
        f"{prices.instance_type} ({prices.worker_usd_per_hour:.3f} USD/h)"
    )


def _mirror_values(text: str) -> list[bool]:
    values = []
    for part in _csv(text):
        if part not in ("off", "on"):
            raise click.BadParameter(
                f"expected off or on, got {part!r}", param_hint="--mirror"
            )
        values.append(part == "on")
    return values


def _step_values(text: str) -> list[float]:
    values = []
    for part in _csv(text):
        try:
            step = float(part)
        except ValueError:
            step = math.nan
        if not 0 < step <= 1:
            raise click.BadParameter(
                f"expected tile steps in (0, 1], got {part!r}", param_hint="--steps"
            )
        values.append(step)
    return values


def _setting(row: Any) -> str:
    return (
        f"backend={row.backend} mirror={'on' if row.mirror else 'off'} "
        f"step={row.step} seconds_per_scan={row.seconds_per_scan:.2f}"
    )


def _mm(value: float) -> str:
    return f"{value:.2f} mm" if math.isfinite(value) else "inf"
