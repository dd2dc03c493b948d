"""Seconds per scan and peak memory: scanpipe's engine against nnU-Net's predictor.

Both backends run the same model folder on the same volume with the same
settings and thread count, each in a fresh process so that peak resident
memory (``VmHWM``) belongs to one backend alone. Two models:

* ``builtin``: the shipped phantom model (4 stages, 8-64 features, 64^3
  patch) on a 96x96x64 phantom at 0.4 mm (4 patches);
* ``full``: a full-size nnU-Net 3d_fullres ``PlainConvUNet`` (6 stages,
  32-320 features, 128^3 patch) with random weights, on a phantom of one
  patch by default (``--full-shape`` for more).

Each setting is timed after one warm-up scan; the figure is the median.

    .venv/bin/python bench/engine_vs_nnunet.py [--threads 1] [--models builtin,full]
        [--mirror off,on] [--runtimes onnxruntime,openvino] [--repeats 3] [--json]

Needs the nnunet extra (torch, nnunetv2, onnx) to build and run the reference.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from scanpipe.imaging.phantom import make_phantom

BUILTIN = Path(__file__).resolve().parent.parent / "src/scanpipe/models/builtin"
FULL_FEATURES = (32, 64, 128, 256, 320, 320)
FULL_PATCH = (128, 128, 128)


def full_plans() -> dict[str, Any]:
    """Plans of a full-size 3d_fullres network, like the planner writes."""
    plans = json.loads((BUILTIN / "nnunet" / "plans.json").read_text())
    config = plans["configurations"]["3d_fullres"]
    n = len(FULL_FEATURES)
    config["patch_size"] = list(FULL_PATCH)
    config["architecture"]["arch_kwargs"].update(
        n_stages=n,
        features_per_stage=list(FULL_FEATURES),
        kernel_sizes=[[3, 3, 3]] * n,
        strides=[[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
        n_conv_per_stage=[2] * n,
        n_conv_per_stage_decoder=[2] * (n - 1),
    )
    return plans


def make_full_model(root: Path) -> tuple[Path, Path]:
    """An nnU-Net folder with random weights, and its export (cached)."""
    import torch

    from scanpipe.models.export import export_model
    from scanpipe.models.torch_network import build_plain_network

    nnunet_dir, onnx_dir = root / "full-nnunet", root / "full-onnx"
    if (onnx_dir / "manifest.json").is_file():
        return nnunet_dir, onnx_dir
    plans = full_plans()
    nnunet_dir.mkdir(parents=True, exist_ok=True)
    (nnunet_dir / "plans.json").write_text(json.dumps(plans))
    dataset = (BUILTIN / "nnunet" / "dataset.json").read_text()
    (nnunet_dir / "dataset.json").write_text(dataset)
    torch.manual_seed(0)
    architecture = plans["configurations"]["3d_fullres"]["architecture"]
    network = build_plain_network(architecture, 1, 3)
    (nnunet_dir / "fold_0").mkdir(exist_ok=True)
    torch.save(
        {
            "network_weights": network.state_dict(),
            "init_args": {"configuration": "3d_fullres"},
            "trainer_name": "nnUNetTrainer",
            "inference_allowed_mirroring_axes": (0, 1, 2),
            "current_epoch": 0,
        },
        nnunet_dir / "fold_0" / "checkpoint_final.pth",
    )
    export_model(nnunet_dir, onnx_dir, folds=[0], verify=False)
    return nnunet_dir, onnx_dir


def peak_rss_kib() -> int:
    """This process's peak resident memory in KiB.

    ``VmHWM`` belongs to the process image, which starts anew at exec;
    ``ru_maxrss`` does not: on Linux it carries over the parent's resident
    size at fork, so a child of a large parent would report the parent's.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(args: argparse.Namespace) -> None:
    """Run one backend on one setting and print a JSON line."""
    from scanpipe.models.base import Volume

    threads = args.threads
    shape = tuple(int(n) for n in args.shape.split("x"))
    image, _, affine = make_phantom(shape, 0.4, seed=3)
    volume = Volume(np.rint(image).astype(np.float32), affine, (0.4, 0.4, 0.4))
    mirror = args.mirror == "on"

    started = time.perf_counter()
    if args.backend == "engine":
        from scanpipe.models.engine import OnnxSegmenter

        segmenter: Any = OnnxSegmenter(
            args.folder, mirror=mirror, threads=threads, runtime=args.runtime
        )
    else:
        from scanpipe.models.nnunet import NnunetSegmenter

        segmenter = NnunetSegmenter(args.folder, mirror=mirror, threads=threads)
    load_seconds = time.perf_counter() - started
    rss_loaded = peak_rss_kib()

    segmenter.segment(volume)  # warm-up: first-call allocations and caches
    seconds = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        segmenter.segment(volume)
        seconds.append(time.perf_counter() - started)
    peak = peak_rss_kib()
    print(
        json.dumps(
            {
                "load_seconds": round(load_seconds, 2),
                "seconds_per_scan": round(statistics.median(seconds), 3),
                "peak_rss_mib": round(peak / 1024),
                "rss_after_load_mib": round(rss_loaded / 1024),
            }
        )
    )


def run_child(
    backend: str,
    folder: Path,
    mirror: str,
    shape: str,
    args: argparse.Namespace,
    runtime: str = "onnxruntime",
) -> dict[str, Any]:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(args.threads)
    command = [
        sys.executable,
        __file__,
        "--child",
        "--backend",
        backend,
        "--folder",
        str(folder),
        "--mirror",
        mirror,
        "--shape",
        shape,
        "--threads",
        str(args.threads),
        "--repeats",
        str(args.repeats),
        "--runtime",
        runtime,
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{backend} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="builtin,full")
    parser.add_argument("--mirror", default="off,on")
    parser.add_argument(
        "--runtimes",
        default="onnxruntime,openvino",
        help="the engine's runtimes to time (openvino needs the openvino extra)",
    )
    parser.add_argument("--builtin-shape", default="96x96x64")
    parser.add_argument("--full-shape", default="128x128x128")
    parser.add_argument("--work", type=Path, default=None, help="cache folder")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    parser.add_argument("--runtime", default="onnxruntime", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    work = args.work or Path(tempfile.gettempdir()) / "scanpipe-bench-engine"
    models = {}
    for name in args.models.split(","):
        if name == "builtin":
            models[name] = (BUILTIN / "nnunet", BUILTIN / "onnx", args.builtin_shape)
        elif name == "full":
            nnunet_dir, onnx_dir = make_full_model(work)
            models[name] = (nnunet_dir, onnx_dir, args.full_shape)
        else:
            raise SystemExit(f"unknown model {name!r}; expected builtin or full")

    rows = []
    for name, (nnunet_dir, onnx_dir, shape) in models.items():
        for mirror in args.mirror.split(","):
            nnunet = run_child("nnunet", nnunet_dir, mirror, shape, args)
            for runtime in args.runtimes.split(","):
                engine = run_child("engine", onnx_dir, mirror, shape, args, runtime)
                rows.append(
                    {
                        "model": name,
                        "shape": shape,
                        "mirror": mirror,
                        "threads": args.threads,
                        "runtime": runtime,
                        "engine": engine,
                        "nnunet": nnunet,
                        "speedup": round(
                            nnunet["seconds_per_scan"] / engine["seconds_per_scan"],
                            2,
                        ),
                        "memory_ratio": round(
                            engine["peak_rss_mib"] / nnunet["peak_rss_mib"], 2
                        ),
                    }
                )
                if not args.json:
                    print(
                        f"{name:8s} {shape:12s} mirror={mirror:3s} "
                        f"engine/{runtime:11s} {engine['seconds_per_scan']:7.2f} s "
                        f"{engine['peak_rss_mib']:5d} MiB | nnunet "
                        f"{nnunet['seconds_per_scan']:7.2f} s "
                        f"{nnunet['peak_rss_mib']:5d} MiB | "
                        f"speedup {rows[-1]['speedup']:.2f}x",
                        flush=True,
                    )
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
