"""``OnnxSegmenter``: nnU-Net inference on ONNX Runtime, without torch.

Usage::

    segmenter = OnnxSegmenter(Path("exported"), mirror=False, threads=4)
    labels = segmenter.segment(volume).labels

The folder is one written by :func:`scanpipe.models.export.export_model`.
Everything is read and checked in the constructor (plans, labels, manifest,
checksum, graph shapes), so a bad folder stops a worker at start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from scanpipe.errors import ModelError, ScanRejected
from scanpipe.models import spec_options
from scanpipe.models.base import Segmentation, Segmenter, Volume
from scanpipe.models.engine.manifest import file_sha256, read_manifest
from scanpipe.models.engine.plans import load_plans
from scanpipe.models.engine.preprocessing import preprocess
from scanpipe.models.engine.restore import logits_to_labels
from scanpipe.models.engine.session import DEVICES, RUNTIMES, open_network
from scanpipe.models.engine.sliding_window import predict_logits

log = logging.getLogger(__name__)

#: Options an ``onnx:PATH?...`` spec accepts.
SPEC_OPTIONS = ("mirror", "step", "threads", "device", "runtime", "batch")


def engine_options(options: Mapping[str, str]) -> dict[str, Any]:
    """Keyword arguments of :class:`OnnxSegmenter` from a spec's raw options."""
    spec_options.check_known(options, SPEC_OPTIONS, "onnx")
    return {
        "mirror": spec_options.flag(options, "mirror", True),
        "step": spec_options.tile_step(options),
        "threads": spec_options.positive_int(options, "threads"),
        "device": spec_options.choice(options, "device", DEVICES, "auto"),
        "runtime": spec_options.choice(options, "runtime", RUNTIMES, "onnxruntime"),
        "batch_size": spec_options.positive_int(options, "batch") or 1,
    }


class OnnxSegmenter(Segmenter):
    """An exported nnU-Net model run by scanpipe's engine.

    Args:
        model_dir: an export folder (``manifest.json``, ``network.onnx``,
            ``plans.json``, ``dataset.json``).
        mirror: test-time mirroring over the axes the model allows
            (nnU-Net's default; about 8x the network time).
        step: tile step as a fraction of the patch size (nnU-Net: 0.5).
        threads: intra-op threads of the runtime.
        device: ``auto``, ``cpu`` or ``cuda``.
        runtime: ``onnxruntime`` or ``openvino`` (CPU only, faster, a
            little less exact; see :mod:`scanpipe.models.engine.session`).
        batch_size: patches per network call; larger batches help on GPUs.
        id_prefix: first part of ``model_id``.

    Raises:
        ModelError: the folder or a setting is unusable.
    """

    def __init__(
        self,
        model_dir: Path | str,
        *,
        mirror: bool = True,
        step: float = 0.5,
        threads: int | None = None,
        device: str = "auto",
        runtime: str = "onnxruntime",
        batch_size: int = 1,
        id_prefix: str = "onnx",
    ) -> None:
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise ModelError(f"Expected a model folder at {model_dir}, but found none.")
        if not 0 < step <= 1:
            raise ModelError(f"Expected a tile step in (0, 1], but got {step}.")
        if batch_size < 1:
            raise ModelError(f"Expected a batch size of at least 1, got {batch_size}.")

        self.manifest = read_manifest(model_dir)
        self.plans = load_plans(model_dir, self.manifest.configuration)
        if self.plans.input_channels != 1:
            raise ModelError(
                f"Expected a single-channel model for scanpipe's single-volume "
                f"scans, but {model_dir / 'plans.json'} has "
                f"{self.plans.input_channels} channels."
            )
        network_path = model_dir / self.manifest.network
        digest = file_sha256(network_path)
        if digest != self.manifest.sha256:
            raise ModelError(
                f"Expected {network_path} to have the sha256 recorded in "
                f"manifest.json, but it differs: the file was replaced or damaged."
            )

        self.labels = dict(self.plans.labels)
        self.mirror = mirror
        self.step = step
        self.batch_size = batch_size
        self.model_dir = model_dir
        self._mirror_axes = self.manifest.mirror_axes if mirror else None
        self._network = open_network(
            network_path,
            input_channels=self.plans.input_channels,
            num_heads=self.plans.num_heads,
            patch_size=self.plans.patch_size,
            threads=threads,
            device=device,
            runtime=runtime,
        )
        self.model_id = f"{id_prefix}-{self._fingerprint(model_dir, digest)}"
        log.info(
            "model loaded model_id=%s configuration=%s folds=%s mirror=%s step=%s",
            self.model_id,
            self.plans.configuration,
            ",".join(self.manifest.folds),
            mirror,
            step,
        )

    @classmethod
    def from_spec(cls, path: str, options: Mapping[str, str]) -> OnnxSegmenter:
        """Build from ``onnx:PATH?mirror=0&step=0.5&threads=4&device=cpu``."""
        return cls(Path(path), **engine_options(options))

    def _fingerprint(self, model_dir: Path, network_sha256: str) -> str:
        """Hash of everything that decides the masks: weights, plans, settings."""
        digest = hashlib.sha256(network_sha256.encode())
        for name in ("plans.json", "dataset.json"):
            digest.update((model_dir / name).read_bytes())
        settings = {
            "configuration": self.plans.configuration,
            "mirror_axes": self._mirror_axes,
            "step": self.step,
        }
        digest.update(json.dumps(settings, sort_keys=True).encode())
        return digest.hexdigest()[:12]

    def segment(self, volume: Volume) -> Segmentation:
        if volume.data.ndim != 3:
            raise ScanRejected(
                f"Expected a 3D volume, but got shape {volume.data.shape}.",
                reason="not_3d",
            )
        started = time.perf_counter()
        # nnU-Net's readers give (Z, Y, X) of the file's (X, Y, Z).
        image = volume.data.transpose(2, 1, 0)[None]
        spacing = tuple(float(s) for s in volume.spacing[::-1])
        case = preprocess(image, spacing, self.plans)
        logits = predict_logits(
            case.data,
            self._network,
            patch_size=self.plans.patch_size,
            num_heads=self.plans.num_heads,
            tile_step=self.step,
            mirror_axes=self._mirror_axes,
            batch_size=self.batch_size,
        )
        inferred = time.perf_counter()

        labels = logits_to_labels(logits, case, self.plans)
        labels = np.ascontiguousarray(labels.transpose(2, 1, 0))
        finished = time.perf_counter()
        return Segmentation(
            labels=labels,
            seconds={
                "inference": inferred - started,
                "postprocess": finished - inferred,
            },
        )

    def describe(self) -> dict[str, object]:
        return {
            "model_id": self.model_id,
            "labels": self.labels,
            "backend": "onnx",
            "configuration": self.plans.configuration,
            "folds": list(self.manifest.folds),
            "trainer_name": self.manifest.trainer_name,
            "mirror": self.mirror,
            "tile_step": self.step,
            "providers": list(self._network.providers),
        }
