"""The network as a runtime session: ONNX Runtime or OpenVINO, threads, shapes.

A session is built once per worker. Two runtimes run the same exported
``network.onnx``:

* ONNX Runtime (the default, in the default install): on CUDA when its CUDA
  provider is installed and the device allows it, otherwise on the CPU. Its
  masks match nnU-Net's to Dice >= 0.999 per label in the parity tests.
* OpenVINO (``runtime=openvino``, ``pip install 'scanpipe[openvino]'``), CPU
  only: its 3D convolutions run well ahead of ONNX Runtime's on x86 (see
  BENCHMARKS.md). It computes in float32, as nnU-Net does (its default on CPUs
  with bfloat16 units would change the masks), but its instance
  normalisation is less exact: logits differ from a float64 reference by
  about 1e-4 where ONNX Runtime's differ by 5e-6, so a voxel on a tie between
  two labels flips a little more often (Dice >= 0.998 in the parity tests).

Both get the worker's thread count for intra-op parallelism and one stream
(the graph is a single chain of convolutions, so more buys nothing for one
scan at a time).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from scanpipe.errors import ModelError

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
RUNTIMES = ("onnxruntime", "openvino")
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


class Network(Protocol):
    """What the sliding window needs: (N, C, *patch) in, (N, heads, *patch) out."""

    #: Where it runs, for the provenance record: ONNX Runtime's provider
    #: names, or ``OpenVINO:CPU``.
    providers: list[str]

    def __call__(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]: ...


def open_network(
    path: Path,
    *,
    input_channels: int,
    num_heads: int,
    patch_size: tuple[int, ...],
    threads: int | None = None,
    device: str = "auto",
    runtime: str = "onnxruntime",
) -> Network:
    """Load ``path`` on the runtime and device asked for.

    Raises:
        ModelError: the runtime or device is unknown or not installed, the file
            cannot be loaded, or its shapes do not match the plans.
    """
    if runtime not in RUNTIMES:
        raise ModelError(f"Expected runtime in {RUNTIMES}, but got {runtime!r}.")
    if runtime == "openvino" and device == "cuda":
        raise ModelError(
            "Expected device=cpu or auto with runtime=openvino, but got "
            "device=cuda: scanpipe runs OpenVINO on the CPU only."
        )
    if runtime == "openvino":
        return OpenVinoNetwork(
            path,
            input_channels=input_channels,
            num_heads=num_heads,
            patch_size=patch_size,
            threads=threads,
        )
    return OnnxNetwork(
        path,
        input_channels=input_channels,
        num_heads=num_heads,
        patch_size=patch_size,
        threads=threads,
        device=device,
    )


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
        _check_shapes(
            path,
            [i.shape for i in self._session.get_inputs()],
            [o.shape for o in self._session.get_outputs()],
            input_channels,
            num_heads,
            patch_size,
        )
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


class OpenVinoNetwork:
    """A loaded ONNX network run by OpenVINO on the CPU, in float32.

    Args:
        path: the ``.onnx`` file.
        input_channels, num_heads, patch_size: what the plans promise.
        threads: inference threads; by default ``OMP_NUM_THREADS`` or
            OpenVINO's own choice.

    Raises:
        ModelError: OpenVINO is not installed, or the file cannot be loaded,
            or its shapes do not match the plans.
    """

    def __init__(
        self,
        path: Path,
        *,
        input_channels: int,
        num_heads: int,
        patch_size: tuple[int, ...],
        threads: int | None = None,
    ) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise ModelError(
                "Expected OpenVINO for runtime=openvino, but it is not installed "
                "(pip install 'scanpipe[openvino]')."
            ) from exc

        threads = threads or _env_threads()
        config = {
            # nnU-Net and ONNX Runtime compute in float32; OpenVINO would
            # pick bfloat16 on CPUs that have it, and masks would drift.
            "INFERENCE_PRECISION_HINT": "f32",
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": "1",
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = str(threads)
        try:
            # The ONNX front end alone: read_model would try every framework
            # OpenVINO knows on a damaged file, and each prints its complaint.
            frontend = ov.frontend.FrontEndManager().load_by_framework("onnx")
            model = frontend.convert(frontend.load(str(path)))
            compiled = ov.Core().compile_model(model, "CPU", config)
        except Exception as exc:  # OpenVINO raises its own untyped errors
            raise ModelError(
                f"Expected a loadable ONNX network at {path}, but OpenVINO "
                f"refused it: {exc}"
            ) from exc

        def declared(port: object) -> list[int | str]:
            shape = port.get_partial_shape()  # type: ignore[attr-defined]
            return [d.get_length() if d.is_static else "?" for d in shape]

        _check_shapes(
            path,
            [declared(p) for p in compiled.inputs],
            [declared(p) for p in compiled.outputs],
            input_channels,
            num_heads,
            patch_size,
        )
        self.providers: list[str] = ["OpenVINO:CPU"]
        self._request = compiled.create_infer_request()
        log.info(
            "openvino session ready path=%s threads=%s",
            path.name,
            threads or "auto",
        )

    def __call__(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        self._request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        # The output tensor is the request's own buffer, reused by the next call.
        return np.array(self._request.get_output_tensor(0).data, dtype=np.float32)


def _check_shapes(
    path: Path,
    inputs: Sequence[Sequence[int | str | None]],
    outputs: Sequence[Sequence[int | str | None]],
    input_channels: int,
    num_heads: int,
    patch_size: tuple[int, ...],
) -> None:
    """Compare the graph's declared shapes with what the plans promise.

    Dimensions that are not whole numbers (the batch, dynamic axes) match
    anything.
    """
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelError(
            f"Expected {path} to have one input and one output, but it has "
            f"{len(inputs)} and {len(outputs)}."
        )
    expected_in = [input_channels, *patch_size]
    expected_out = [num_heads, *patch_size]
    for what, shape, expected in (
        ("input", list(inputs[0]), expected_in),
        ("output", list(outputs[0]), expected_out),
    ):
        fixed = [d if isinstance(d, int) else None for d in shape[1:]]
        if len(shape) != len(expected) + 1 or any(
            f is not None and f != e for f, e in zip(fixed, expected, strict=True)
        ):
            raise ModelError(
                f"Expected the {what} of {path} to be (N, "
                f"{', '.join(map(str, expected))}) as plans.json and dataset.json "
                f"say, but it is {shape}."
            )
