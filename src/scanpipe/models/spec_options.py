"""Typed reading of the options in a model spec (``onnx:PATH?mirror=0&step=0.5``).

The registry splits a spec into a path and raw string options; each backend
declares the options it accepts and reads them with these helpers, so every
backend refuses a misspelt or malformed option with the same kind of message
instead of ignoring it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from scanpipe.errors import ModelError

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def check_known(options: Mapping[str, str], known: Iterable[str], backend: str) -> None:
    """Refuse options the backend does not understand."""
    allowed = sorted(known)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ModelError(
            f"Expected options of the {backend} backend from {allowed}, but got "
            f"{unknown}."
        )


def flag(options: Mapping[str, str], name: str, default: bool) -> bool:
    value = options.get(name)
    if value is None:
        return default
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ModelError(f"Expected {name}=0 or {name}=1, but got {name}={value!r}.")


def tile_step(options: Mapping[str, str], default: float = 0.5) -> float:
    value = options.get("step")
    if value is None:
        return default
    try:
        step = float(value)
    except ValueError:
        step = -1.0
    if not 0 < step <= 1:
        raise ModelError(
            f"Expected step to be a number in (0, 1], but got step={value!r}."
        )
    return step


def positive_int(options: Mapping[str, str], name: str) -> int | None:
    value = options.get(name)
    if value is None:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ModelError(
            f"Expected {name} to be a positive integer, but got {name}={value!r}."
        )
    return int(value)


def choice(
    options: Mapping[str, str], name: str, allowed: Iterable[str], default: str
) -> str:
    value = options.get(name, default)
    allowed = tuple(allowed)
    if value not in allowed:
        raise ModelError(f"Expected {name} in {allowed}, but got {name}={value!r}.")
    return value


def folds(options: Mapping[str, str]) -> list[str] | None:
    """``folds=0,1,2`` or ``folds=all``; None means every fold found."""
    value = options.get("folds")
    if value is None:
        return None
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if not parts or not all(p.isdigit() or p == "all" for p in parts):
        raise ModelError(
            "Expected folds as fold numbers separated by commas (or 'all'), but "
            f"got folds={value!r}."
        )
    return parts
