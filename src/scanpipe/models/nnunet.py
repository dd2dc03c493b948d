"""``NnunetSegmenter``: any nnU-Net v2 model folder, run by nnU-Net itself.

Usage::

    segmenter = NnunetSegmenter(Path("model_dir"), folds=["0", "1"], mirror=False)
    labels = segmenter.segment(volume).labels

This is the reference backend: nnunetv2's own preprocessing, its
``nnUNetPredictor`` sliding window and its export of logits to a mask, in
this process. Compared with the ``nnUNetv2_predict`` command it

* builds the predictor once per worker, not once per scan;
* spawns no helper processes (it calls the preprocessor and the predictor
  directly instead of their multiprocessing iterators);
* is quiet: progress bars are off and nnU-Net's prints are captured and
  logged at DEBUG;
* uses the worker's thread count;
* reads checkpoints with ``torch.load(weights_only=True)``; one that needs
  full unpickling loads only with ``trust``;
* still loads a model whose trainer class cannot be imported, by building a
  plain architecture straight from the plans.

Needs the ``nnunet`` extra (torch, nnunetv2).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from scanpipe.errors import ModelError, ScanRejected
from scanpipe.models import spec_options, torch_network
from scanpipe.models.base import Segmentation, Segmenter, Volume
from scanpipe.models.engine.plans import load_plans, read_json

log = logging.getLogger(__name__)

#: Options an ``nnunet:PATH?...`` spec accepts.
SPEC_OPTIONS = ("folds", "checkpoint", "mirror", "step", "device", "threads", "trust")
DEVICES = ("cpu", "cuda")


class NnunetSegmenter(Segmenter):
    """An nnU-Net v2 model folder run with nnunetv2's predictor.

    Args:
        model_dir: the trained model folder.
        folds: fold names to ensemble; by default every fold with the
            checkpoint.
        checkpoint: checkpoint file name in each fold folder.
        mirror: test-time mirroring (nnU-Net's default).
        step: tile step as a fraction of the patch size.
        device: ``cpu`` or ``cuda``.
        threads: torch intra-op threads.
        trust: allow checkpoints that need full unpickling.
        id_prefix: first part of ``model_id``.

    Raises:
        ModelError: nnunetv2 is not installed, or the folder or a setting is
            unusable.
    """

    def __init__(
        self,
        model_dir: Path | str,
        *,
        folds: list[str] | None = None,
        checkpoint: str = "checkpoint_final.pth",
        mirror: bool = True,
        step: float = 0.5,
        device: str = "cpu",
        threads: int | None = None,
        trust: bool = False,
        id_prefix: str = "nnunet",
    ) -> None:
        torch = torch_network.import_torch()
        try:
            from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
            from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
        except ImportError as exc:
            raise ModelError(
                "Expected nnunetv2 for the nnunet backend, but it cannot be "
                f"imported ({exc}); install `pip install 'scanpipe[nnunet]'`."
            ) from exc
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise ModelError(f"Expected a model folder at {model_dir}, but found none.")
        if device not in DEVICES:
            raise ModelError(f"Expected device in {DEVICES}, but got {device!r}.")
        if device == "cuda" and not torch.cuda.is_available():
            raise ModelError(
                "Expected a CUDA device for device=cuda, but torch sees none."
            )
        if not 0 < step <= 1:
            raise ModelError(f"Expected a tile step in (0, 1], but got {step}.")
        torch_network.set_threads(threads)
        self.threads = threads or torch.get_num_threads()

        fold_names = folds or torch_network.find_folds(model_dir, checkpoint)
        checkpoints = [
            torch_network.load_checkpoint(
                model_dir / f"fold_{f}" / checkpoint, trust=trust
            )
            for f in fold_names
        ]
        first = checkpoints[0]
        # Validates the files with scanpipe's messages before nnU-Net sees them.
        plans = load_plans(model_dir, first.configuration)
        if plans.input_channels != 1:
            raise ModelError(
                f"Expected a single-channel model for scanpipe's single-volume "
                f"scans, but {model_dir / 'plans.json'} has "
                f"{plans.input_channels} channels."
            )
        raw_plans = read_json(model_dir / "plans.json")
        dataset_json = read_json(model_dir / "dataset.json")

        network = torch_network.network_for(
            raw_plans,
            first.configuration,
            plans.input_channels,
            plans.num_heads,
            first.trainer_name,
        )
        for ckpt in checkpoints:
            # Checked fold by fold, so a mismatch names its file.
            torch_network.load_weights(network, ckpt)
        plans_manager = PlansManager(raw_plans)
        with _captured("predictor init"):
            predictor = nnUNetPredictor(
                tile_step_size=step,
                use_gaussian=True,
                use_mirroring=mirror,
                perform_everything_on_device=device == "cuda",
                device=torch.device(device),
                verbose=False,
                verbose_preprocessing=False,
                allow_tqdm=False,
            )
            predictor.manual_initialization(
                network,
                plans_manager,
                plans_manager.get_configuration(first.configuration),
                [c.weights for c in checkpoints],
                dataset_json,
                first.trainer_name,
                first.mirror_axes,
            )
        self._predictor = predictor
        self._torch = torch
        self.labels = dict(plans.labels)
        self.folds = list(fold_names)
        self.mirror = mirror
        self.step = step
        self.device = device
        self.trainer_name = first.trainer_name
        self.configuration = first.configuration
        self.model_id = f"{id_prefix}-{self._fingerprint(model_dir, checkpoints)}"
        log.info(
            "model loaded model_id=%s configuration=%s folds=%s mirror=%s step=%s "
            "device=%s threads=%d",
            self.model_id,
            first.configuration,
            ",".join(self.folds),
            mirror,
            step,
            device,
            self.threads,
        )

    @classmethod
    def from_spec(cls, path: str, options: Mapping[str, str]) -> NnunetSegmenter:
        """Build from ``nnunet:PATH?folds=0,1&mirror=0&step=0.5&device=cpu``."""
        spec_options.check_known(options, SPEC_OPTIONS, "nnunet")
        return cls(
            Path(path),
            folds=spec_options.folds(options),
            checkpoint=options.get("checkpoint", "checkpoint_final.pth"),
            mirror=spec_options.flag(options, "mirror", True),
            step=spec_options.tile_step(options),
            device=spec_options.choice(options, "device", DEVICES, "cpu"),
            threads=spec_options.positive_int(options, "threads"),
            trust=spec_options.flag(options, "trust", False),
        )

    def _fingerprint(self, model_dir: Path, checkpoints: list[Any]) -> str:
        digest = hashlib.sha256()
        for ckpt in checkpoints:
            digest.update(ckpt.path.read_bytes())
        for name in ("plans.json", "dataset.json"):
            digest.update((model_dir / name).read_bytes())
        settings = {
            "configuration": self.configuration,
            "folds": self.folds,
            "mirror": self.mirror,
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
        from nnunetv2.inference.export_prediction import (
            convert_predicted_logits_to_segmentation_with_correct_shape,
        )

        predictor = self._predictor
        started = time.perf_counter()
        # nnU-Net's readers give (Z, Y, X) of the file's (X, Y, Z).
        image = np.ascontiguousarray(volume.data.transpose(2, 1, 0)[None])
        properties: dict[str, Any] = {
            "spacing": [float(s) for s in volume.spacing[::-1]]
        }
        with _captured("predict"):
            preprocessor = predictor.configuration_manager.preprocessor_class(
                verbose=False
            )
            data, _, properties = preprocessor.run_case_npy(
                image,
                None,
                properties,
                predictor.plans_manager,
                predictor.configuration_manager,
                predictor.dataset_json,
            )
            logits = predictor.predict_logits_from_preprocessed_data(
                self._torch.from_numpy(data)
            ).cpu()
        inferred = time.perf_counter()

        with _captured("export"):
            labels = convert_predicted_logits_to_segmentation_with_correct_shape(
                logits,
                predictor.plans_manager,
                predictor.configuration_manager,
                predictor.label_manager,
                properties,
                return_probabilities=False,
                num_threads_torch=self.threads,
            )
        labels = np.ascontiguousarray(np.asarray(labels).transpose(2, 1, 0), np.uint8)
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
            "backend": "nnunet",
            "configuration": self.configuration,
            "folds": self.folds,
            "trainer_name": self.trainer_name,
            "mirror": self.mirror,
            "tile_step": self.step,
            "device": self.device,
        }


@contextlib.contextmanager
def _captured(stage: str) -> Iterator[None]:
    """Keep nnU-Net's prints out of the worker's output; log them at DEBUG."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield
    text = buffer.getvalue().strip()
    if text:
        log.debug("nnunet output stage=%s text=%s", stage, text.replace("\n", " | "))
