"""Segmentation models, loaded by a one-line spec.

A spec names a kind, an argument and options::

    builtin                                  the shipped model, on the engine
    builtin?mirror=0&threads=4
    onnx:PATH?mirror=0&step=0.5              an export (`scanpipe export`)
    nnunet:PATH?folds=0,1&device=cuda        an nnU-Net v2 model folder
    nnunet:builtin                           the shipped model, on nnU-Net
    threshold
    threshold:bone=400,teeth=1400,min_island_mm3=5

Options after ``?`` are ``key=value`` pairs joined by ``&``; the threshold
model takes its own as ``threshold:key=value,...``. Every kind also accepts
the post-processing options of :mod:`scanpipe.models.postprocess`
(``keep_largest``, ``min_island_mm3``).

``load_segmenter`` looks the kind up in ``_FACTORIES``. The ``nnunet`` kind
imports torch and nnunetv2 only when it is used, so the default install,
which has neither, runs every other kind.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from scanpipe.errors import ModelError
from scanpipe.models import postprocess
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
        ModelError: the kind is unknown, its argument or an option is
            invalid, or the model files are unusable (the message names
            the file).
    """
    head, _, query = spec.strip().partition("?")
    kind, _, argument = head.partition(":")
    factory = _FACTORIES.get(kind)
    if factory is None:
        raise ModelError(
            f"Expected a model kind among {', '.join(sorted(_FACTORIES))}, "
            f"but the spec {spec!r} names {kind!r}."
        )
    options = parse_query(kind, query)
    rules_options = {
        k: options.pop(k) for k in postprocess.SPEC_OPTIONS if k in options
    }
    segmenter = factory(argument, options)
    rules = postprocess.parse_rules(rules_options, segmenter.labels)
    if rules:
        return postprocess.PostprocessedSegmenter(segmenter, rules)
    return segmenter


def parse_query(kind: str, query: str) -> dict[str, str]:
    """Split the ``key=value&key=value`` after ``?`` into a dict."""
    options: dict[str, str] = {}
    for item in query.split("&") if query.strip() else []:
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not key or not value:
            raise ModelError(
                f"Expected options of model {kind!r} as key=value joined by &, "
                f"but found {item!r}."
            )
        if key in options:
            raise ModelError(
                f"Expected each option of model {kind!r} once, "
                f"but {key!r} is given twice."
            )
        options[key] = value
    return options


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


def _load_threshold(argument: str, options: dict[str, str]) -> Segmenter:
    if options:
        raise ModelError(
            "Expected the threshold model's options as threshold:key=value,..., "
            f"but found {sorted(options)} after '?'."
        )
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


def _load_builtin(argument: str, options: dict[str, str]) -> Segmenter:
    if argument:
        raise ModelError(
            "Expected the builtin model's options after '?' "
            f"(builtin?mirror=0), but found builtin:{argument}."
        )
    from scanpipe.models.builtin import BuiltinSegmenter

    return BuiltinSegmenter.from_options(options)


def _load_onnx(argument: str, options: dict[str, str]) -> Segmenter:
    from scanpipe.models.engine import OnnxSegmenter

    return OnnxSegmenter.from_spec(_path(argument, "onnx"), options)


def _load_nnunet(argument: str, options: dict[str, str]) -> Segmenter:
    # Imported here: the module is light, but what it loads needs torch.
    from scanpipe.models.builtin import NNUNET_DIR
    from scanpipe.models.nnunet import NnunetSegmenter

    if argument == "builtin":
        return NnunetSegmenter.from_spec(str(NNUNET_DIR), options)
    return NnunetSegmenter.from_spec(_path(argument, "nnunet"), options)


def _path(argument: str, kind: str) -> str:
    if not argument.strip():
        raise ModelError(
            f"Expected a model folder after '{kind}:' ({kind}:PATH), but the "
            "spec has none."
        )
    return argument.strip()


_FACTORIES: dict[str, Callable[[str, dict[str, str]], Segmenter]] = {
    "builtin": _load_builtin,
    "nnunet": _load_nnunet,
    "onnx": _load_onnx,
    "threshold": _load_threshold,
}
