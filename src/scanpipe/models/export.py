"""Convert an nnU-Net v2 model folder into the engine's ONNX format.

Usage::

    from scanpipe.models.export import export_model
    export_model(Path("nnUNetTrainer__nnUNetPlans__3d_fullres"), Path("out"))

All the folds go into one graph that averages their logits, which is what
``nnUNetPredictor`` does with several folds: it sums each fold's
sliding-window logits and divides by the number of folds. Sliding-window
weighting and mirroring are linear in the logits, so averaging per patch
inside the graph gives the same result with one network call per patch.

Needs torch, dynamic_network_architectures and onnx (the ``nnunet`` extra);
they are imported here only, so the default install never loads them.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from scanpipe.errors import ModelError
from scanpipe.models import torch_network
from scanpipe.models.engine.manifest import NETWORK, Manifest, file_sha256
from scanpipe.models.engine.plans import load_plans, read_json

log = logging.getLogger(__name__)

#: ONNX opset of the exported graph; ONNX Runtime 1.16 and later run it.
OPSET = 17
#: Largest difference between torch's and ONNX Runtime's logits accepted by
#: the check after export; float32 convolutions differ by about 1e-5.
_MAX_LOGIT_DIFFERENCE = 1e-2


def export_model(
    model_dir: Path,
    out_dir: Path,
    *,
    folds: list[str] | list[int] | None = None,
    checkpoint: str = "checkpoint_final.pth",
    trust: bool = False,
    verify: bool = True,
) -> Path:
    """Export the folds of an nnU-Net model folder as one ONNX network.

    Args:
        model_dir: the trained model folder (``plans.json``, ``dataset.json``,
            ``fold_*/checkpoint``).
        out_dir: created if needed; must not hold an export already.
        folds: fold names (``0``, ``1``, ..., ``all``); by default every fold
            that has ``checkpoint``.
        checkpoint: checkpoint file name inside each fold folder.
        trust: allow checkpoints that need full unpickling.
        verify: run the exported graph once and compare with torch.

    Returns:
        The path of the written ``manifest.json``.

    Raises:
        ModelError: the folder is unusable, the folds disagree, or the
            export does not reproduce the network.
    """
    torch = torch_network.import_torch()
    model_dir = Path(model_dir)
    out_dir = Path(out_dir)
    if (out_dir / "manifest.json").exists():
        raise ModelError(
            f"Expected an empty output folder, but {out_dir} holds an export."
        )

    fold_names = [str(f) for f in folds] if folds else None
    fold_names = fold_names or torch_network.find_folds(model_dir, checkpoint)
    checkpoints = [
        torch_network.load_checkpoint(model_dir / f"fold_{f}" / checkpoint, trust=trust)
        for f in fold_names
    ]
    first = checkpoints[0]
    for other in checkpoints[1:]:
        if (other.configuration, other.trainer_name) != (
            first.configuration,
            first.trainer_name,
        ):
            raise ModelError(
                f"Expected every fold to share configuration and trainer, but "
                f"{first.path} has {first.configuration}/{first.trainer_name} and "
                f"{other.path} has {other.configuration}/{other.trainer_name}."
            )
    plans = load_plans(model_dir, first.configuration)
    raw_plans = read_json(model_dir / "plans.json")

    networks = []
    for ckpt in checkpoints:
        network = torch_network.network_for(
            raw_plans,
            first.configuration,
            plans.input_channels,
            plans.num_heads,
            first.trainer_name,
        )
        torch_network.load_weights(network, ckpt)
        network.eval()
        networks.append(network)
    ensemble = _fold_mean(torch, networks)

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        staged = Path(tmp) / NETWORK
        example = torch.zeros((1, plans.input_channels, *plans.patch_size))
        _export_onnx(torch, ensemble, example, staged)
        if verify:
            _verify(torch, ensemble, staged, plans.input_channels, plans.patch_size)
        shutil.move(str(staged), out_dir / NETWORK)

    for name in ("plans.json", "dataset.json"):
        shutil.copyfile(model_dir / name, out_dir / name)
    manifest = Manifest(
        sha256=file_sha256(out_dir / NETWORK),
        configuration=first.configuration,
        folds=fold_names,
        checkpoint=checkpoint,
        trainer_name=first.trainer_name,
        mirror_axes=None if first.mirror_axes is None else list(first.mirror_axes),
        exported_with=_versions(),
    )
    path = manifest.write(out_dir)
    log.info(
        "model exported out_dir=%s folds=%s configuration=%s bytes=%d",
        out_dir,
        ",".join(fold_names),
        first.configuration,
        (out_dir / NETWORK).stat().st_size,
    )
    return path


def _fold_mean(torch: Any, networks: list[Any]) -> Any:
    """A module that averages the logits of the folds' networks."""

    class FoldMean(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.folds = torch.nn.ModuleList(networks)

        def forward(self, x: Any) -> Any:
            total = self.folds[0](x)
            for network in self.folds[1:]:
                total = total + network(x)
            return total / len(self.folds) if len(self.folds) > 1 else total

    return FoldMean().eval()


def _export_onnx(torch: Any, module: Any, example: Any, path: Path) -> None:
    """Trace to ONNX with a dynamic batch axis and fixed patch size."""
    with warnings.catch_warnings():
        # The TorchScript exporter warns about its own deprecation, about
        # shape checks it traces as constants (the patch size is fixed) and
        # about instance norm in training mode (it has no running statistics,
        # so both modes compute the same).
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module,
                (example,),
                str(path),
                dynamo=False,
                input_names=["image"],
                output_names=["logits"],
                dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=OPSET,
                do_constant_folding=True,
            )
        except Exception as exc:  # the tracer raises many kinds
            raise ModelError(
                f"Expected the network to export to ONNX, but tracing failed: {exc}"
            ) from exc


def _verify(
    torch: Any,
    module: Any,
    path: Path,
    input_channels: int,
    patch_size: tuple[int, ...],
) -> None:
    """Run one random patch through torch and ONNX Runtime and compare."""
    import onnxruntime as ort

    example = np.random.default_rng(0).standard_normal(
        (1, input_channels, *patch_size), dtype=np.float32
    )
    with torch.no_grad():
        expected = module(torch.from_numpy(example)).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (found,) = session.run(None, {"image": example})
    difference = float(np.max(np.abs(found - expected)))
    if not difference <= _MAX_LOGIT_DIFFERENCE:
        raise ModelError(
            f"Expected the exported network to reproduce torch's logits, but "
            f"they differ by up to {difference:.3g}."
        )
    log.debug("export verified max_logit_difference=%.3g", difference)


def _versions() -> dict[str, str]:
    found = {}
    for package in ("torch", "onnx", "dynamic_network_architectures", "nnunetv2"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found
