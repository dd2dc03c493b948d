"""The builtin model: jaw and teeth in CBCT phantoms, shipped with the package.

Two folders hold the same network: ``nnunet/``, a genuine nnU-Net v2 model
folder, and ``onnx/``, its export for the engine. ``MODEL_CARD.md`` says how
it was trained and how well it does; ``scripts/train_builtin.py`` rebuilds
all three.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from scanpipe.models import spec_options
from scanpipe.models.engine.segmenter import OnnxSegmenter, engine_options

#: The builtin model's nnU-Net folder, for ``nnunet:builtin``.
NNUNET_DIR = Path(__file__).resolve().parent / "nnunet"
#: Its export, run by :class:`BuiltinSegmenter`.
ONNX_DIR = Path(__file__).resolve().parent / "onnx"


class BuiltinSegmenter(OnnxSegmenter):
    """The builtin model on scanpipe's engine; options as for ``onnx:``.

    Unlike nnU-Net, mirroring is off by default: on held-out phantoms it
    adds about 0.002 Dice for eight times the network time (MODEL_CARD.md,
    ``scanpipe tradeoff``). ``builtin?mirror=1`` turns it on.
    """

    def __init__(
        self,
        *,
        mirror: bool = False,
        step: float = 0.5,
        threads: int | None = None,
        device: str = "auto",
        runtime: str = "onnxruntime",
        batch_size: int = 1,
    ) -> None:
        super().__init__(
            ONNX_DIR,
            mirror=mirror,
            step=step,
            threads=threads,
            device=device,
            runtime=runtime,
            batch_size=batch_size,
            id_prefix="builtin",
        )

    @classmethod
    def from_options(cls, options: Mapping[str, str]) -> BuiltinSegmenter:
        """Build from ``builtin?mirror=1&threads=4``; options as for ``onnx:``."""
        return cls(**{**engine_options(options), "mirror": _mirror(options)})


def _mirror(options: Mapping[str, str]) -> bool:
    return spec_options.flag(options, "mirror", False)


__all__ = ["NNUNET_DIR", "ONNX_DIR", "BuiltinSegmenter"]
