"""Helpers that build nnU-Net v2 model folders and export folders for tests.

``make_model_folder`` writes a real folder (plans, dataset, checkpoints) for
a tiny ``PlainConvUNet`` with random weights; it needs torch. The builtin
model's folders are used where trained weights matter (parity of masks).
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

from scanpipe.imaging.phantom import LABELS

REPO = Path(__file__).resolve().parents[2]
BUILTIN = REPO / "src" / "scanpipe" / "models" / "builtin"
BUILTIN_NNUNET = BUILTIN / "nnunet"
BUILTIN_ONNX = BUILTIN / "onnx"


def make_plans(
    *,
    patch: tuple[int, int, int] = (32, 32, 32),
    spacing: tuple[float, float, float] = (0.4, 0.4, 0.4),
    features: tuple[int, ...] = (4, 8),
    transpose: tuple[int, int, int] = (0, 1, 2),
    normalization: str = "CTNormalization",
    use_mask: bool = False,
) -> dict[str, Any]:
    """Plans of one 3d_fullres configuration, as nnU-Net's planner writes them."""
    n = len(features)
    backward = [transpose.index(i) for i in range(3)]
    resample = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    return {
        "dataset_name": "Dataset999_Test",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": list(spacing),
        "original_median_shape_after_transp": [64, 64, 64],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": list(transpose),
        "transpose_backward": backward,
        "configurations": {
            "3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": list(patch),
                "median_image_size_in_voxels": [64.0, 64.0, 64.0],
                "spacing": list(spacing),
                "normalization_schemes": [normalization],
                "use_mask_for_norm": [use_mask],
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": resample,
                "resampling_fn_seg_kwargs": {**resample, "is_seg": True, "order": 1},
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": {**resample, "order": 1},
                "architecture": {
                    "network_class_name": (
                        "dynamic_network_architectures.architectures.unet.PlainConvUNet"
                    ),
                    "arch_kwargs": {
                        "n_stages": n,
                        "features_per_stage": list(features),
                        "conv_op": "torch.nn.modules.conv.Conv3d",
                        "kernel_sizes": [[3, 3, 3]] * n,
                        "strides": [[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
                        "n_conv_per_stage": [2] * n,
                        "n_conv_per_stage_decoder": [2] * (n - 1),
                        "conv_bias": True,
                        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                        "dropout_op": None,
                        "dropout_op_kwargs": None,
                        "nonlin": "torch.nn.LeakyReLU",
                        "nonlin_kwargs": {"inplace": True},
                    },
                    "_kw_requires_import": [
                        "conv_op",
                        "norm_op",
                        "dropout_op",
                        "nonlin",
                    ],
                },
                "batch_dice": False,
            }
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {
                "max": 3000.0,
                "mean": 1200.0,
                "median": 1100.0,
                "min": -200.0,
                "percentile_00_5": 300.0,
                "percentile_99_5": 2800.0,
                "std": 500.0,
            }
        },
    }


def make_dataset_json() -> dict[str, Any]:
    return {
        "channel_names": {"0": "CT"},
        "labels": dict(LABELS),
        "numTraining": 1,
        "file_ending": ".nii.gz",
    }


def make_model_folder(
    root: Path,
    *,
    folds: tuple[str, ...] = ("0",),
    seed: int = 0,
    plans: dict[str, Any] | None = None,
) -> Path:
    """An nnU-Net model folder with random weights (needs torch)."""
    import torch

    from scanpipe.models.torch_network import build_plain_network

    plans = plans or make_plans()
    root.mkdir(parents=True, exist_ok=True)
    (root / "plans.json").write_text(json.dumps(plans))
    (root / "dataset.json").write_text(json.dumps(make_dataset_json()))
    architecture = plans["configurations"]["3d_fullres"]["architecture"]
    for i, fold in enumerate(folds):
        torch.manual_seed(seed + i)
        network = build_plain_network(architecture, 1, len(LABELS))
        save_checkpoint(
            root / f"fold_{fold}" / "checkpoint_final.pth", network.state_dict(), plans
        )
    return root


def save_checkpoint(path: Path, weights: dict[str, Any], plans: dict[str, Any]) -> None:
    """nnU-Net's checkpoint layout, tensors and plain types only."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "network_weights": weights,
            "optimizer_state": None,
            "grad_scaler_state": None,
            "logging": {},
            "_best_ema": None,
            "current_epoch": 1,
            "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0},
            "trainer_name": "nnUNetTrainer",
            "inference_allowed_mirroring_axes": (0, 1, 2),
        },
        path,
    )


def copy_builtin_with_folds(root: Path, extra_folds: int, noise: float = 0.02) -> Path:
    """The builtin nnU-Net folder plus folds with perturbed copies of its weights."""
    import torch

    shutil.copytree(BUILTIN_NNUNET, root)
    source = torch.load(root / "fold_0" / "checkpoint_final.pth", weights_only=True)
    generator = torch.Generator().manual_seed(1)
    for fold in range(1, extra_folds + 1):
        weights = copy.deepcopy(source["network_weights"])
        for tensor in weights.values():
            if tensor.is_floating_point():
                scale = noise * tensor.abs().mean()
                tensor += scale * torch.randn(tensor.shape, generator=generator)
        checkpoint = dict(source, network_weights=weights)
        path = root / f"fold_{fold}" / "checkpoint_final.pth"
        path.parent.mkdir(parents=True)
        torch.save(checkpoint, path)
    return root


def rewrite_plans(folder: Path, change: Any) -> None:
    """Apply ``change(plans)`` to a folder's plans.json in place."""
    plans = json.loads((folder / "plans.json").read_text())
    change(plans)
    (folder / "plans.json").write_text(json.dumps(plans))
