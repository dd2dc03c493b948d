"""Pipeline overhead per scan: worker wall time minus segmenter time.

Runs the real worker loop in-process (embedded queue, folder stores, the
chosen model) on a 256^3 phantom and reports, per stage, where the time goes.
Overhead is everything the worker spends outside ``segment()``: download,
validation and decoding, mask encoding and upload, queue calls. Target: under
5 % of the segmenter time.

    .venv/bin/python bench/pipeline_overhead.py [--size 256] [--repeats 3]
        [--model builtin]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from scanpipe.events import QueueNotifier
from scanpipe.imaging.phantom import make_phantom
from scanpipe.models import load_segmenter
from scanpipe.queue import open_queue
from scanpipe.storage.local import LocalStore
from scanpipe.worker.loop import Worker, WorkerSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="builtin")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        image, _, affine = make_phantom(shape=(args.size,) * 3, spacing=0.3, seed=1)
        scan = root / "scan.nii.gz"
        nib.save(nib.Nifti1Image(image.astype(np.int16), affine), scan)

        queue = open_queue(f"sqlite://{root}/queue.db")
        inbox = LocalStore(root / "in", bucket="in")
        inbox.add_put_listener(QueueNotifier(queue))
        worker = Worker(
            queue=queue,
            input_store=inbox,
            output_store=LocalStore(root / "out"),
            segmenter=load_segmenter(args.model),
            settings=WorkerSettings(wait_seconds=0),
        )

        rows = []
        for i in range(args.repeats):
            inbox.put_file(f"scan-{i}.nii.gz", scan)
            (message,) = queue.receive(1)
            start = time.perf_counter()
            (record,) = worker.handle(message)
            wall = time.perf_counter() - start
            segment = record.seconds["inference"] + record.seconds["postprocess"]
            rows.append({"wall": wall, "segment": segment, **record.seconds})

    wall = statistics.median(r["wall"] for r in rows)
    segment = statistics.median(r["segment"] for r in rows)
    overhead = wall - segment
    result = {
        "size": args.size,
        "model": args.model,
        "repeats": args.repeats,
        "wall_seconds": round(wall, 3),
        "segmenter_seconds": round(segment, 3),
        "overhead_seconds": round(overhead, 3),
        "overhead_percent": round(100 * overhead / segment, 1),
        "stages_seconds": {
            stage: round(statistics.median(r[stage] for r in rows), 3)
            for stage in ("download", "validate", "inference", "postprocess", "upload")
        },
    }
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"pipeline overhead, {args.size}^3 phantom, model {args.model}, "
        f"median of {args.repeats}"
    )
    print(f"  worker wall time   {wall:8.3f} s")
    print(f"  segmenter time     {segment:8.3f} s")
    print(f"  overhead           {overhead:8.3f} s  ({result['overhead_percent']} %)")
    for stage, seconds in result["stages_seconds"].items():
        print(f"    {stage:12} {seconds:8.3f} s")


if __name__ == "__main__":
    main()
