"""The network as an ONNX Runtime session: providers, threads, shape checks.

A session is built once per worker. It runs on CUDA when ONNX Runtime's CUDA
provider is installed and the device allows it, otherwise on the CPU, with
the worker's thread count for intra-op parallelism and one inter-op thread
(the graph is a single chain of convolutions, so more buys nothing).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import numpy.typing as npt

from scanpipe.errors import ModelError

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


class OnnxNetwork:
    """A loaded ONNX network that maps (N, C, *patch) to (N, heads, *patch).

    Args:
        path: the ``.onnx`` file.
        input_channels: channels the plans promise.
        num_heads: outputs the dataset's labels promise.
        patch_size: the plans' patch size.
        threads: intra-op threads; by default ``OMP_NUM_THREADS`` or
            ONNX Runtime's own choice.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.

    Raises:
        ModelError: the file cannot be loaded, CUDA was asked for but is not
            available, or the graph's shapes do not match the plans.
    """

    def __init__(
        self,
        path: Path,
        *,
        input_channels: int,
        num_heads: int,
        patch_size: tuple[int, ...],
        threads: int | None = None,
        device: str = "auto",
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ModelError(
                "Expected onnxruntime for the ONNX engine, but it is not installed."
            ) from exc
        if device not in DEVICES:
            raise ModelError(f"Expected device in {DEVICES}, but got {device!r}.")

        available = ort.get_available_providers()
        if device == "cuda" and _CUDA not in available:
            raise ModelError(
                "Expected ONNX Runtime's CUDA provider for device=cuda, but only "
                f"{available} are installed (install onnxruntime-gpu)."
            )
        providers = [_CUDA, _CPU] if device != "cpu" and _CUDA in available else [_CPU]

        options = ort.SessionOptions()
        threads = threads or _env_threads()
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # warnings about unused providers are noise
        try:
            self._session = ort.InferenceSession(
                str(path), sess_options=options, providers=providers
            )
        except Exception as exc:  # ORT raises its own untyped errors
            raise ModelError(
                f"Expected a loadable ONNX network at {path}, but ONNX Runtime "
                f"refused it: {exc}"
            ) from exc

        self.providers: list[str] = list(self._session.get_providers())
        self._input = self._session.get_inputs()[0].name
        _check_shapes(self._session, path, input_channels, num_heads, patch_size)
        log.info(
            "onnx session ready path=%s providers=%s threads=%s",
            path.name,
            ",".join(self.providers),
            threads or "auto",
        )

    def __call__(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        (logits,) = self._session.run(None, {self._input: batch})
        return np.asarray(logits, dtype=np.float32)


def _env_threads() -> int | None:
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def _check_shapes(
    session: object,
    path: Path,
    input_channels: int,
    num_heads: int,
    patch_size: tuple[int, ...],
) -> None:
    """Compare the graph's declared shapes with what the plans promise."""
    inputs = session.get_inputs()  # type: ignore[attr-defined]
    outputs = session.get_outputs()  # type: ignore[attr-defined]
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelError(
            f"Expected {path} to have one input and one output, but it has "
            f"{len(inputs)} and {len(outputs)}."
        )
    expected_in = [input_channels, *patch_size]
    expected_out = [num_heads, *patch_size]
    for what, shape, expected in (
        ("input", inputs[0].shape, expected_in),
        ("output", outputs[0].shape, expected_out),
    ):
        # Symbolic dimensions (the batch, dynamic axes) are strings.
        fixed = [d if isinstance(d, int) else None for d in shape[1:]]
        if len(shape) != len(expected) + 1 or any(
            f is not None and f != e for f, e in zip(fixed, expected, strict=True)
        ):
            raise ModelError(
                f"Expected the {what} of {path} to be (N, "
                f"{', '.join(map(str, expected))}) as plans.json and dataset.json "
                f"say, but it is {shape}."
            )
