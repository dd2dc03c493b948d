"""Quality against cost: one model under a grid of inference settings.

Test-time mirroring multiplies the network time (eight passes instead of
one), a smaller tile step adds overlapping patches, and the two backends
differ in speed. :func:`run_tradeoff` runs every combination over cases with
ground truth and reports, per setting, the mean Dice per label, the seconds
per scan and what those seconds cost at a worker's hourly price: the table a
team reads to decide whether a setting is worth its price.

Usage::

    grid = Grid(backends=("engine", "nnunet"), mirror=(False, True), steps=(0.5,))
    rows = run_tradeoff(Path("phantoms"), "builtin", grid, usd_per_hour=1.006)

The cases folder is nnU-Net's raw layout, as ``scanpipe phantom`` writes it:
``imagesTr/NAME_0000.nii.gz`` and ``labelsTr/NAME.nii.gz``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from scanpipe.errors import ConfigError, ModelError
from scanpipe.evaluation import (
    finite_or_none,
    label_names,
    load_labels,
    mean_scores,
    score_case,
)
from scanpipe.imaging.nifti import load_scan
from scanpipe.models import load_segmenter, parse_query
from scanpipe.models.base import Volume

log = logging.getLogger(__name__)

BACKENDS = ("engine", "nnunet")
#: Options that mean the same to both backends and travel between them.
_SHARED_OPTIONS = ("threads", "keep_largest", "min_island_mm3")
#: Options of the nnunet backend that choose what an export holds.
_EXPORT_OPTIONS = ("folds", "checkpoint", "trust")


@dataclass(frozen=True)
class Grid:
    """The settings to try; every combination is run."""

    backends: tuple[str, ...]
    mirror: tuple[bool, ...] = (False, True)
    steps: tuple[float, ...] = (0.5,)


@dataclass(frozen=True)
class Case:
    """One scan with its ground truth."""

    name: str
    volume: Volume
    truth: npt.NDArray[np.int32]


@dataclass(frozen=True)
class TradeoffRow:
    """The outcome of one setting over all cases."""

    backend: str
    mirror: bool
    step: float
    spec: str
    model_id: str
    dice: dict[str, float]  # mean over cases, by label name
    hd95_mm: dict[str, float]  # mean over cases, by label name
    seconds_per_scan: float  # mean wall time of segment(), model loaded
    cost_usd_per_scan: float | None

    def to_json(self) -> dict[str, object]:
        return {
            "backend": self.backend,
            "mirror": self.mirror,
            "step": self.step,
            "spec": self.spec,
            "model_id": self.model_id,
            "dice": self.dice,
            "hd95_mm": {k: finite_or_none(v) for k, v in self.hd95_mm.items()},
            "seconds_per_scan": self.seconds_per_scan,
            "cost_usd_per_scan": self.cost_usd_per_scan,
        }


def read_cases(cases_dir: Path) -> list[Case]:
    """Every ``imagesTr/NAME_0000.nii.gz`` that has ``labelsTr/NAME.nii.gz``.

    Raises:
        ConfigError: the folder does not have that layout, or has no case.
    """
    images, labels = cases_dir / "imagesTr", cases_dir / "labelsTr"
    if not images.is_dir() or not labels.is_dir():
        raise ConfigError(
            f"Expected {cases_dir} in nnU-Net's raw layout (imagesTr/ and "
            "labelsTr/, as `scanpipe phantom` writes), but one is missing."
        )
    cases = []
    for image in sorted(images.glob("*_0000.nii*")):
        name = image.name.split("_0000.nii")[0]
        suffix = image.name.split("_0000")[1]
        truth_path = labels / f"{name}{suffix}"
        if not truth_path.is_file():
            raise ConfigError(
                f"Expected the ground truth of {image.name} at {truth_path}, "
                "but the file is missing."
            )
        truth, _ = load_labels(truth_path)
        volume = load_scan(image)
        if truth.shape != volume.data.shape:
            raise ConfigError(
                f"Expected {truth_path} to have the shape of its image "
                f"{volume.data.shape}, but it has {truth.shape}."
            )
        cases.append(Case(name, volume, truth))
    if not cases:
        raise ConfigError(
            f"Expected images named NAME_0000.nii.gz in {images}, but found none."
        )
    return cases


def available_backends(spec: str) -> tuple[str, ...]:
    """The backends a spec can be run on with what is installed."""
    kind = _kind(spec)
    has_nnunet = all(
        importlib.util.find_spec(name) is not None for name in ("torch", "nnunetv2")
    )
    if kind == "onnx":
        return ("engine",)
    if kind == "builtin":
        return BACKENDS if has_nnunet else ("engine",)
    if kind == "nnunet":
        return BACKENDS
    raise ModelError(
        f"Expected a builtin, onnx: or nnunet: model for the trade-off, but "
        f"{kind!r} has no mirroring or tile step to vary."
    )


def run_tradeoff(
    cases_dir: Path,
    spec: str,
    grid: Grid,
    *,
    usd_per_hour: float | None = None,
    on_row: Callable[[TradeoffRow], None] | None = None,
) -> list[TradeoffRow]:
    """Run every setting of ``grid`` over the cases and score it.

    Args:
        cases_dir: nnU-Net raw layout with ground truth.
        spec: the model, as for ``--model``; its mirror and step options
            are replaced by the grid's.
        grid: the settings to try.
        usd_per_hour: what a worker costs per hour; None leaves cost out.
        on_row: called with each row as soon as it is measured.

    Raises:
        ConfigError: the cases are unusable.
        ModelError: the model cannot run on a backend the grid names.
    """
    unknown = sorted(set(grid.backends) - set(BACKENDS))
    if unknown:
        raise ConfigError(f"Expected backends from {BACKENDS}, but got {unknown}.")
    cases = read_cases(cases_dir)
    present = set().union(*({int(v) for v in np.unique(c.truth)} for c in cases))
    labels = label_names(cases_dir / "labelsTr", present)

    rows = []
    with _backend_specs(spec, grid.backends) as bases:
        for backend in grid.backends:
            for mirror in grid.mirror:
                for step in grid.steps:
                    spec_now = _with_options(
                        bases[backend], mirror=int(mirror), step=step
                    )
                    row = _run_setting(
                        backend, mirror, step, spec_now, cases, labels, usd_per_hour
                    )
                    log.info(
                        "tradeoff setting backend=%s mirror=%s step=%s "
                        "seconds_per_scan=%.2f",
                        backend,
                        mirror,
                        step,
                        row.seconds_per_scan,
                    )
                    if on_row is not None:
                        on_row(row)
                    rows.append(row)
    return rows


def _run_setting(
    backend: str,
    mirror: bool,
    step: float,
    spec: str,
    cases: list[Case],
    labels: dict[int, str],
    usd_per_hour: float | None,
) -> TradeoffRow:
    segmenter = load_segmenter(spec)
    scores, seconds = [], []
    for case in cases:
        started = time.perf_counter()
        predicted = segmenter.segment(case.volume).labels
        seconds.append(time.perf_counter() - started)
        spacing = case.volume.spacing
        scores.append(score_case(case.name, predicted, case.truth, spacing, labels))
    means = mean_scores(scores)
    per_scan = float(np.mean(seconds))
    return TradeoffRow(
        backend=backend,
        mirror=mirror,
        step=step,
        spec=_display_spec(spec),
        model_id=segmenter.model_id,
        dice={name: m["dice"] for name, m in means.items()},
        hd95_mm={name: m["hd95_mm"] for name, m in means.items()},
        seconds_per_scan=per_scan,
        cost_usd_per_scan=(
            None if usd_per_hour is None else per_scan * usd_per_hour / 3600
        ),
    )


@contextlib.contextmanager
def _backend_specs(spec: str, backends: tuple[str, ...]) -> Iterator[dict[str, str]]:
    """The spec of the same model on each backend, exporting if need be.

    An ``nnunet:`` folder runs on the engine through a temporary export of
    the same folds; an ``onnx:`` export cannot go back to nnU-Net.
    """
    head, _, query = spec.strip().partition("?")
    kind, _, argument = head.partition(":")
    options = parse_query(kind, query)
    shared = {k: v for k, v in options.items() if k in _SHARED_OPTIONS}
    device = options.get("device")
    if device in ("cpu", "cuda"):
        shared["device"] = device
    available = available_backends(spec)
    missing = [b for b in backends if b not in available]
    if missing:
        raise ModelError(
            f"Expected {spec!r} to run on backends {list(backends)}, but it runs "
            f"only on {list(available)} here (an onnx: export has no nnU-Net "
            "folder; the nnunet backend needs `pip install 'scanpipe[nnunet]'`)."
        )

    with tempfile.TemporaryDirectory(prefix="scanpipe-tradeoff-") as tmp:
        bases: dict[str, str] = {}
        if kind == "builtin" or (kind == "nnunet" and argument == "builtin"):
            bases = {
                "engine": _spec("builtin", shared),
                "nnunet": _spec("nnunet:builtin", _nnunet_only(options, shared)),
            }
        elif kind == "onnx":
            bases = {"engine": _spec(head, {**shared, **_engine_only(options)})}
        else:
            bases = {"nnunet": _spec(head, _nnunet_only(options, shared))}
            if "engine" in backends:
                exported = _export(Path(argument), Path(tmp) / "onnx", options)
                bases["engine"] = _spec(f"onnx:{exported}", shared)
        yield bases


def _export(model_dir: Path, out_dir: Path, options: dict[str, str]) -> Path:
    from scanpipe.models import spec_options
    from scanpipe.models.export import export_model

    export_model(
        model_dir,
        out_dir,
        folds=spec_options.folds(options),
        checkpoint=options.get("checkpoint", "checkpoint_final.pth"),
        trust=spec_options.flag(options, "trust", False),
    )
    return out_dir


def _nnunet_only(options: dict[str, str], shared: dict[str, str]) -> dict[str, str]:
    return {**shared, **{k: v for k, v in options.items() if k in _EXPORT_OPTIONS}}


def _engine_only(options: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in options.items() if k in ("batch", "device")}


def _spec(head: str, options: dict[str, str]) -> str:
    if not options:
        return head
    return head + "?" + "&".join(f"{k}={v}" for k, v in options.items())


def _with_options(spec: str, **options: object) -> str:
    head, _, query = spec.partition("?")
    current = parse_query(_kind(spec), query)
    current.update({k: str(v) for k, v in options.items()})
    return _spec(head, current)


def _kind(spec: str) -> str:
    return spec.strip().partition("?")[0].partition(":")[0]


def _display_spec(spec: str) -> str:
    # A temporary export's path means nothing once the run is over.
    if spec.startswith("onnx:") and "scanpipe-tradeoff-" in spec:
        return "onnx:<export>?" + spec.partition("?")[2]
    return spec
