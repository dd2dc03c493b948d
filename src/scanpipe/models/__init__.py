"""Segmentation models, loaded by a one-line spec.

A spec is ``KIND`` or ``KIND:ARGUMENT``; what the argument means is up to the
kind. Kinds that take settings read it as comma-separated ``key=value``
options::

    threshold
    threshold:bone=400,teeth=1400,min_island_mm3=5

``load_segmenter`` looks the kind up in ``_FACTORIES``; a new backend (an
ONNX file, an nnU-Net results folder) is one more entry there, taking its
argument as a path.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from scanpipe.errors import ModelError
from scanpipe.models.base import Segmentation, Segmenter, Volume
from scanpipe.models.threshold import ThresholdSegmenter

__all__ = [
    "Segmentation",
    "Segmenter",
    "ThresholdSegmenter",
    "Volume",
    "load_segmenter",
    "parse_options",
]

#: Option names of the threshold spec, and the constructor argument each sets.
_THRESHOLD_OPTIONS = {
    "bone": "bone_hu",
    "teeth": "teeth_hu",
    "min_island_mm3": "min_island_mm3",
    "smooth_mm": "smooth_mm",
    "open_mm": "open_mm",
    "fill_holes": "fill_holes",
}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def load_segmenter(spec: str) -> Segmenter:
    """Load the model a spec names, doing all expensive work now.

    Raises:
        ModelError: the kind is unknown, or its argument is invalid.
    """
    kind, _, argument = spec.strip().partition(":")
    factory = _FACTORIES.get(kind)
    if factory is None:
        raise ModelError(
            f"Expected a model kind among {', '.join(sorted(_FACTORIES))}, "
            f"but the spec {spec!r} names {kind!r}."
        )
    return factory(argument)


def parse_options(kind: str, argument: str) -> dict[str, str]:
    """Split ``key=value,key=value`` into a dict, refusing malformed items.

    Args:
        kind: the model kind, named in error messages.
        argument: the text after ``KIND:``; empty means no options.
    """
    options: dict[str, str] = {}
    if not argument.strip():
        return options
    for item in argument.split(","):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not key or not value:
            raise ModelError(
                f"Expected options of model {kind!r} as key=value, but found {item!r}."
            )
        if key in options:
            raise ModelError(
                f"Expected each option of model {kind!r} once, "
                f"but {key!r} is given twice."
            )
        options[key] = value
    return options


def _load_threshold(argument: str) -> Segmenter:
    settings: dict[str, Any] = {}
    for key, value in parse_options("threshold", argument).items():
        name = _THRESHOLD_OPTIONS.get(key)
        if name is None:
            raise ModelError(
                f"Expected options of model 'threshold' among "
                f"{', '.join(_THRESHOLD_OPTIONS)}, but found {key!r}."
            )
        settings[name] = _parse_value(key, value, boolean=name == "fill_holes")
    return ThresholdSegmenter(**settings)


def _parse_value(key: str, value: str, *, boolean: bool) -> float | bool:
    if boolean:
        if value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
        expected = "true or false"
    else:
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if math.isfinite(number):
            return number
        expected = "a finite number"
    raise ModelError(f"Expected option {key!r} to be {expected}, but found {value!r}.")


_FACTORIES: dict[str, Callable[[str], Segmenter]] = {
    "threshold": _load_threshold,
}
