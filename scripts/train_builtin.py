"""Train the builtin jaw and teeth model and ship it inside the package.

The result is a genuine nnU-Net v2 model folder (``dataset.json``,
``plans.json``, ``fold_0/checkpoint_final.pth``) for a small 3d_fullres
``PlainConvUNet``, trained on synthetic CBCT phantoms from
:mod:`scanpipe.imaging.phantom`, plus its ONNX export for scanpipe's engine
and a model card with the held-out Dice.

The training loop is plain torch rather than ``nnUNetv2_train``: the phantoms
are clean enough that a few hundred iterations on one CPU thread suffice,
while nnU-Net's default schedule is 250,000. Everything the predictor reads is
written as nnU-Net writes it, so ``nnUNetPredictor`` loads the folder as is.

Usage (about 25 minutes on one CPU core)::

    .venv/bin/python scripts/train_builtin.py
    .venv/bin/python scripts/train_builtin.py --skip-training  # re-export, re-evaluate

It needs the ``nnunet`` extra (torch, dynamic_network_architectures, onnx).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# One thread before numpy and torch load: the machine is shared, and the
# figures in the model card are for one core.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import numpy.typing as npt

from scanpipe.imaging.phantom import LABELS, make_phantom

log = logging.getLogger("train_builtin")

REPO = Path(__file__).resolve().parent.parent
BUILTIN_DIR = REPO / "src" / "scanpipe" / "models" / "builtin"

#: Phantom geometries: (X, Y, Z) voxels at isotropic spacing in mm. The
#: phantom shrinks its anatomy to fit a small field of view and surrounds it
#: with air in a large one, so cases cycle from half-size anatomy (64x64x48,
#: which is also what a 128x128x96 scan at 0.2 mm becomes at 0.4 mm) through
#: ``scanpipe phantom``'s default (128x128x96) to wide fields of view with
#: the whole head in air (192x192x144, a 256x256x192 scan at 0.3 mm).
SHAPES = (
    (64, 64, 48),
    (80, 80, 56),
    (96, 96, 64),
    (112, 112, 80),
    (128, 128, 96),
    (160, 160, 120),
    (192, 192, 144),
)
#: ``scanpipe phantom``'s default geometry.
DEFAULT_SHAPE = (128, 128, 96)
#: The median shape, which nnU-Net's planner records.
SHAPE = SHAPES[len(SHAPES) // 2]
SPACING_MM = 0.4
#: Seeds of the training and held-out phantoms; disjoint by construction.
TRAIN_SEED = 2024
HELD_OUT_SEED = 7
PATCH = (64, 64, 64)
FEATURES = (8, 16, 32, 64)
DATASET_NAME = "Dataset900_CBCTPhantom"
CONFIGURATION = "3d_fullres"


def case_seed(dataset_seed: int, index: int) -> int:
    """The seed of case ``index``, derived as ``write_dataset`` derives it."""
    return int(np.random.SeedSequence([dataset_seed, index]).generate_state(1)[0])


def make_cases(
    dataset_seed: int, count: int
) -> list[tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]]:
    """Phantoms in nnU-Net's axis order (Z, Y, X), as its readers load them.

    Intensities are rounded to int16 as in the NIfTI files of
    ``write_dataset``, so training sees what a scan file holds.
    """
    cases = []
    for i in range(count):
        shape = SHAPES[i % len(SHAPES)]
        image, labels, _ = make_phantom(shape, SPACING_MM, case_seed(dataset_seed, i))
        hu = np.clip(np.rint(image), -32768, 32767).astype(np.int16)
        cases.append(
            (
                np.ascontiguousarray(hu.transpose(2, 1, 0)).astype(np.float32),
                np.ascontiguousarray(labels.transpose(2, 1, 0)),
            )
        )
    return cases


def intensity_properties(
    cases: list[tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]],
) -> dict[str, float]:
    """Foreground intensity statistics, sampled as nnU-Net's fingerprint does.

    Each case contributes 10,000 foreground voxels drawn with replacement
    from a generator seeded with 1234; the statistics are over the union.
    """
    samples = []
    for image, labels in cases:
        rs = np.random.RandomState(1234)
        foreground = image[labels > 0]
        samples.append(rs.choice(foreground, 10000, replace=True))
    values = np.concatenate(samples)
    low, median, high = np.percentile(values, (0.5, 50.0, 99.5))
    return {
        "max": float(np.max(values)),
        "mean": float(np.mean(values)),
        "median": float(median),
        "min": float(np.min(values)),
        "percentile_00_5": float(low),
        "percentile_99_5": float(high),
        "std": float(np.std(values)),
    }


def make_dataset_json(count: int) -> dict[str, object]:
    return {
        "channel_names": {"0": "CT"},
        "labels": LABELS,
        "numTraining": count,
        "file_ending": ".nii.gz",
        "name": DATASET_NAME,
        "description": (
            "Synthetic CBCT phantoms of a lower jaw with teeth from "
            f"scanpipe.imaging.phantom: {count} cases, seed {TRAIN_SEED}, "
            f"shapes {[list(s) for s in SHAPES]} (X, Y, Z), spacing {SPACING_MM} mm."
        ),
    }


def make_plans(properties: dict[str, float]) -> dict[str, object]:
    """Plans in the layout of nnU-Net's ExperimentPlanner, for one 3d_fullres."""
    n_stages = len(FEATURES)
    median_shape = [SHAPE[2], SHAPE[1], SHAPE[0]]
    resample = {"order": 3, "order_z": 0, "force_separate_z": None}
    configuration = {
        "data_identifier": f"nnUNetPlans_{CONFIGURATION}",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": list(PATCH),
        "median_image_size_in_voxels": [float(n) for n in median_shape],
        "spacing": [SPACING_MM] * 3,
        "normalization_schemes": ["CTNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, **resample},
        "resampling_fn_seg_kwargs": {"is_seg": True, **resample, "order": 1},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, **resample, "order": 1},
        "architecture": {
            "network_class_name": (
                "dynamic_network_architectures.architectures.unet.PlainConvUNet"
            ),
            "arch_kwargs": {
                "n_stages": n_stages,
                "features_per_stage": list(FEATURES),
                "conv_op": "torch.nn.modules.conv.Conv3d",
                "kernel_sizes": [[3, 3, 3]] * n_stages,
                "strides": [[1, 1, 1]] + [[2, 2, 2]] * (n_stages - 1),
                "n_conv_per_stage": [2] * n_stages,
                "n_conv_per_stage_decoder": [2] * (n_stages - 1),
                "conv_bias": True,
                "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                "dropout_op": None,
                "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU",
                "nonlin_kwargs": {"inplace": True},
            },
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
        },
        "batch_dice": False,
    }
    return {
        "dataset_name": DATASET_NAME,
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [SPACING_MM] * 3,
        "original_median_shape_after_transp": median_shape,
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {CONFIGURATION: configuration},
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": properties},
    }


def ct_normalize(
    image: npt.NDArray[np.float32], properties: dict[str, float]
) -> npt.NDArray[np.float32]:
    """nnU-Net's CTNormalization; the phantoms need no crop or resampling."""
    out = np.clip(image, properties["percentile_00_5"], properties["percentile_99_5"])
    out -= properties["mean"]
    out /= max(properties["std"], 1e-8)
    return out.astype(np.float32)


def pad_to_patch(
    image: npt.NDArray[np.float32], labels: npt.NDArray[np.uint8]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    """Pad a case smaller than the patch, centred, as nnU-Net pads it.

    The image is padded with 0 (after normalisation), as both nnU-Net's
    training loader and its sliding window pad, so training sees what
    inference will feed the network; the padding is background.
    """
    pad = []
    for n, p in zip(image.shape, PATCH, strict=True):
        missing = max(p - n, 0)
        pad.append((missing // 2, missing - missing // 2))
    return np.pad(image, pad), np.pad(labels, pad)


def build_network(plans: dict[str, object]):  # type: ignore[no-untyped-def]
    from scanpipe.models.torch_network import build_plain_network

    configuration = plans["configurations"][CONFIGURATION]  # type: ignore[index]
    return build_plain_network(configuration["architecture"], 1, len(LABELS))


def sample_batch(
    cases: list[tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]],
    rng: np.random.Generator,
    batch_size: int,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Random patches, a third centred on foreground, randomly mirrored.

    Mirroring along every axis is the augmentation that makes nnU-Net's
    test-time mirroring meaningful, so the checkpoint allows it on all axes.
    """
    images = np.empty((batch_size, 1, *PATCH), dtype=np.float32)
    targets = np.empty((batch_size, *PATCH), dtype=np.int64)
    for b in range(batch_size):
        image, labels = cases[int(rng.integers(len(cases)))]
        if rng.random() < 1 / 3:
            label = int(rng.integers(1, len(LABELS)))
            where = np.argwhere(labels == label)
            centre = where[int(rng.integers(len(where)))]
            start = [
                int(np.clip(c - p // 2, 0, n - p))
                for c, p, n in zip(centre, PATCH, image.shape, strict=True)
            ]
        else:
            start = [
                int(rng.integers(0, n - p + 1))
                for p, n in zip(PATCH, image.shape, strict=True)
            ]
        window = tuple(slice(s, s + p) for s, p in zip(start, PATCH, strict=True))
        patch, target = image[window], labels[window]
        for axis in range(3):
            if rng.random() < 0.5:
                patch, target = np.flip(patch, axis), np.flip(target, axis)
        images[b, 0] = patch
        targets[b] = target
    return images, targets


def dice_ce_loss(logits, target):  # type: ignore[no-untyped-def]
    """Cross-entropy plus soft Dice over the foreground classes, as nnU-Net."""
    import torch

    ce = torch.nn.functional.cross_entropy(logits, target)
    probs = torch.softmax(logits, 1)
    onehot = torch.nn.functional.one_hot(target, logits.shape[1])
    onehot = onehot.permute(0, 4, 1, 2, 3).to(probs.dtype)
    axes = (0, 2, 3, 4)  # batch Dice: sums over the batch as well
    intersect = (probs * onehot).sum(axes)
    denominator = probs.sum(axes) + onehot.sum(axes)
    dice = (2 * intersect + 1e-5) / (denominator + 1e-5)
    return ce - dice[1:].mean()


def train(
    plans: dict[str, object],
    cases: list[tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]],
    iterations: int,
    batch_size: int,
    seed: int,
) -> tuple[object, list[float]]:
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    network = build_network(plans)
    network.train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=3e-3, weight_decay=3e-5)
    # nnU-Net's polynomial decay, over our much shorter schedule.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: (1 - i / iterations) ** 0.9
    )
    losses: list[float] = []
    started = time.perf_counter()
    for iteration in range(iterations):
        images, targets = sample_batch(cases, rng, batch_size)
        logits = network(torch.from_numpy(images))
        loss = dice_ce_loss(logits, torch.from_numpy(targets))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 12)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if (iteration + 1) % 25 == 0:
            log.info(
                "train iteration=%d loss=%.4f seconds=%.0f",
                iteration + 1,
                float(np.mean(losses[-25:])),
                time.perf_counter() - started,
            )
    network.eval()
    return network, losses


def save_checkpoint(
    network: object,
    plans: dict[str, object],
    dataset_json: dict[str, object],
    losses: list[float],
    training: dict[str, float],
    path: Path,
) -> None:
    """Write nnU-Net's checkpoint layout with tensors and plain types only.

    The optimizer state is left out: it is only needed to resume training
    with ``nnUNetv2_train --c`` and would triple the file.
    """
    import torch

    checkpoint = {
        "network_weights": network.state_dict(),  # type: ignore[attr-defined]
        "optimizer_state": None,
        "grad_scaler_state": None,
        # What the model card reports, kept with the weights it describes.
        "logging": {"train_losses": [float(x) for x in losses], **training},
        "_best_ema": None,
        "current_epoch": int(training["iterations"]),
        "init_args": {
            "plans": plans,
            "configuration": CONFIGURATION,
            "fold": 0,
            "dataset_json": dataset_json,
        },
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)


def dice(
    pred: npt.NDArray[np.uint8], truth: npt.NDArray[np.uint8], label: int
) -> float:
    a, b = pred == label, truth == label
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def evaluate(
    onnx_dir: Path, count: int, mirror: bool, shape: tuple[int, int, int]
) -> dict[str, object]:
    """Held-out Dice of the exported model through scanpipe's engine."""
    from scanpipe.models.base import Volume
    from scanpipe.models.engine import OnnxSegmenter

    segmenter = OnnxSegmenter(onnx_dir, mirror=mirror, threads=1)
    per_label: dict[str, list[float]] = {name: [] for name in ("jaw", "teeth")}
    seconds = []
    for i in range(count):
        image, truth, affine = make_phantom(
            shape, SPACING_MM, case_seed(HELD_OUT_SEED, i)
        )
        hu = np.clip(np.rint(image), -32768, 32767).astype(np.float32)
        volume = Volume(hu, affine, (SPACING_MM,) * 3)
        started = time.perf_counter()
        labels = segmenter.segment(volume).labels
        seconds.append(time.perf_counter() - started)
        for name in per_label:
            per_label[name].append(dice(labels, truth, LABELS[name]))
    return {
        "shape": "x".join(map(str, shape)),
        "mirror": mirror,
        "cases": count,
        "dice_mean": {k: round(float(np.mean(v)), 4) for k, v in per_label.items()},
        "dice_min": {k: round(float(np.min(v)), 4) for k, v in per_label.items()},
        "seconds_per_scan": round(float(np.mean(seconds)), 2),
    }


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def write_model_card(
    out_dir: Path,
    training: dict[str, float],
    held_out: int,
    properties: dict[str, float],
    results: list[dict[str, object]],
) -> None:
    nnunet_kib = folder_bytes(out_dir / "nnunet") / 1024
    onnx_kib = folder_bytes(out_dir / "onnx") / 1024
    rows = "\n".join(
        f"| {r['shape']} | {'on' if r['mirror'] else 'off'} "
        f"| {r['dice_mean']['jaw']:.4f} "  # type: ignore[index]
        f"| {r['dice_mean']['teeth']:.4f} | {r['dice_min']['jaw']:.4f} "  # type: ignore[index]
        f"| {r['dice_min']['teeth']:.4f} | {r['seconds_per_scan']:.2f} |"  # type: ignore[index]
        for r in results
    )
    low, high = properties["percentile_00_5"], properties["percentile_99_5"]
    threads = int(training.get("threads", 1))
    text = f"""# Builtin model: jaw and teeth in CBCT phantoms

The default model of scanpipe. It is a genuine nnU-Net v2 model folder
(`nnunet/`) and its export for scanpipe's ONNX engine (`onnx/`), so both
backends run it: `builtin` (the engine) and `nnunet:builtin` (nnU-Net).
`builtin` runs without mirroring unless asked (`builtin?mirror=1`): the
table below shows what mirroring buys and what it costs.

It is trained on synthetic phantoms only. It segments the phantoms of
`scanpipe.imaging.phantom`; it is not a model for patient scans.

## Network

- nnU-Net v2 `3d_fullres`, trainer name `nnUNetTrainer`, fold 0 only.
- `PlainConvUNet` from dynamic_network_architectures: {len(FEATURES)} stages,
  features {list(FEATURES)}, 3x3x3 convolutions, instance norm, leaky ReLU.
- Patch {list(PATCH)} voxels at {SPACING_MM} mm isotropic; mirroring allowed
  on all three axes at inference.
- `CTNormalization` with foreground intensity properties from the training
  phantoms: clip to [{low:.1f}, {high:.1f}] HU, subtract
  {properties["mean"]:.1f}, divide by {properties["std"]:.1f}.
- Labels: 0 background, 1 jaw, 2 teeth.

## Training data

{training["train_cases"]:.0f} phantoms, in turn of
{", ".join("x".join(map(str, s)) for s in SHAPES)} voxels (X, Y, Z) at
{SPACING_MM} mm (the phantom scales its anatomy to the field of view),
case seeds derived from dataset seed {TRAIN_SEED} as `write_dataset`
derives them, intensities rounded to int16 HU. Plain torch training loop:
{training["iterations"]:.0f} iterations of
{training["batch_size"]:.0f} random {PATCH[0]}^3 patches (a third centred on
foreground), random mirroring on all axes, cross-entropy plus soft Dice,
AdamW with nnU-Net's polynomial learning-rate decay. Trained in
{training["train_seconds"] / 60:.1f} minutes on {threads} CPU thread(s) of
a shared machine.

## Held-out Dice

{held_out} phantoms of each shape from dataset seed {HELD_OUT_SEED}, never
seen in training, segmented end to end by scanpipe's engine (tile step 0.5):

| shape | mirroring | jaw mean | teeth mean | jaw min | teeth min | s/scan, 1 thread |
|---|---|---|---|---|---|---|
{rows}

## Size

- `nnunet/`: {nnunet_kib:.0f} KiB (checkpoint without optimizer state)
- `onnx/`: {onnx_kib:.0f} KiB

## Retraining

    .venv/bin/pip install -e '.[nnunet]'
    .venv/bin/python scripts/train_builtin.py

The script draws the phantoms, writes `dataset.json` and `plans.json`,
trains, saves `nnunet/fold_0/checkpoint_final.pth`, exports `onnx/` with
`scanpipe.models.export.export_model`, evaluates the held-out phantoms and
rewrites this card. `--skip-training` re-exports and re-evaluates the
shipped checkpoint.
"""
    (out_dir / "MODEL_CARD.md").write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=BUILTIN_DIR)
    parser.add_argument("--train-cases", type=int, default=28)
    parser.add_argument("--held-out", type=int, default=2, help="cases per shape")
    parser.add_argument("--iterations", type=int, default=1200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--skip-training",
        action="store_true",
        help="keep the existing checkpoint; export and evaluate again",
    )
    parser.add_argument(
        "--min-dice",
        type=float,
        default=0.9,
        help="fail when the held-out Dice of a label falls below this",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import torch

    torch.set_num_threads(args.threads)
    nnunet_dir = args.out / "nnunet"
    checkpoint = nnunet_dir / "fold_0" / "checkpoint_final.pth"
    if args.skip_training:
        plans = json.loads((nnunet_dir / "plans.json").read_text())
        properties = plans["foreground_intensity_properties_per_channel"]["0"]
        logged = torch.load(checkpoint, weights_only=True)["logging"]
        training = {k: v for k, v in logged.items() if k != "train_losses"}
    else:
        cases = make_cases(TRAIN_SEED, args.train_cases)
        properties = intensity_properties(cases)
        plans = make_plans(properties)
        dataset_json = make_dataset_json(args.train_cases)
        normalized = [
            pad_to_patch(ct_normalize(image, properties), lab) for image, lab in cases
        ]
        log.info(
            "training cases=%d iterations=%d batch_size=%d",
            len(cases),
            args.iterations,
            args.batch_size,
        )
        started = time.perf_counter()
        network, losses = train(
            plans, normalized, args.iterations, args.batch_size, args.seed
        )
        training = {
            "train_seconds": round(time.perf_counter() - started, 1),
            "iterations": args.iterations,
            "batch_size": args.batch_size,
            "train_cases": args.train_cases,
            "threads": args.threads,
        }
        nnunet_dir.mkdir(parents=True, exist_ok=True)
        (nnunet_dir / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
        (nnunet_dir / "plans.json").write_text(json.dumps(plans, indent=2))
        save_checkpoint(network, plans, dataset_json, losses, training, checkpoint)
        log.info(
            "checkpoint saved path=%s seconds=%.0f",
            checkpoint,
            training["train_seconds"],
        )

    from scanpipe.models.export import export_model

    onnx_dir = args.out / "onnx"
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "onnx"
        export_model(nnunet_dir, staged, folds=[0])
        shutil.rmtree(onnx_dir, ignore_errors=True)
        shutil.copytree(staged, onnx_dir)

    # Mirroring costs about 8x, so it is measured on the default shape only.
    results = [evaluate(onnx_dir, args.held_out, False, shape) for shape in SHAPES]
    results.append(evaluate(onnx_dir, args.held_out, True, DEFAULT_SHAPE))
    for result in results:
        log.info("held-out %s", json.dumps(result))
    write_model_card(args.out, training, args.held_out, properties, results)

    worst = min(
        min(r["dice_mean"].values())  # type: ignore[attr-defined]
        for r in results
    )
    if worst < args.min_dice:
        log.error("held-out Dice %.4f is below %.2f", worst, args.min_dice)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
