"""Scale-from-zero reaction: from enqueue to a worker holding the message.

Runs the embedded stack (1 s polling interval, zero cooldown, one worker at
most) and submits one scan at a time while no worker runs. The reaction is the
time from the object-created event to the worker's receive of its message,
taken from the ledger (the ``queue_wait`` stage): it includes the autoscaler's
poll, the process start, imports and model load. Target: at most 2 s.

    .venv/bin/python bench/scale_from_zero.py [--trials 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from scanpipe.autoscale import ScalingPolicy
from scanpipe.imaging.phantom import make_phantom
from scanpipe.stack import EmbeddedStack, RunDir, StackSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        image, _, affine = make_phantom(shape=(64, 64, 48), spacing=0.4, seed=2)
        scan = root / "scan.nii.gz"
        nib.save(nib.Nifti1Image(image.astype(np.int16), affine), scan)

        settings = StackSettings(
            max_workers=1,
            policy=ScalingPolicy(
                polling_interval_seconds=1.0,
                cooldown_period_seconds=0.0,
                max_replicas=1,
                target_per_replica=1,
                scale_down_stabilization_seconds=0.0,
            ),
            worker_wait_seconds=1.0,
        )
        stack = EmbeddedStack(RunDir(root / "run"), settings)
        stop = threading.Event()
        runner = threading.Thread(target=stack.run, args=(stop,), daemon=True)
        runner.start()

        reactions = []
        for trial in range(args.trials):
            while stack.supervisor.running or stack.supervisor.stopping:
                time.sleep(0.2)
            time.sleep(1.0)  # land anywhere within the polling interval
            stack.input_store.put_file(f"trial-{trial}.nii.gz", scan)
            while len(stack.ledger.scans()) <= trial:
                time.sleep(0.1)
            reactions.append(stack.ledger.scans()[trial].seconds["queue_wait"])
        stop.set()
        runner.join()
        stack.close()

    result = {
        "trials": args.trials,
        "polling_interval_seconds": 1.0,
        "median_seconds": round(statistics.median(reactions), 2),
        "max_seconds": round(max(reactions), 2),
        "reactions_seconds": [round(r, 2) for r in reactions],
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"scale-from-zero reaction over {args.trials} trials (1 s polling)")
    print(f"  median {result['median_seconds']} s, max {result['max_seconds']} s")
    print(f"  each: {result['reactions_seconds']}")


if __name__ == "__main__":
    main()
