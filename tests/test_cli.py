"""The command line as users type it: files in, files and one-line errors out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from tests import scans


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scanpipe", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "SCANPIPE_LOG_LEVEL": "WARNING"},
    )


def test_phantom_writes_an_nnunet_raw_dataset(tmp_path: Path) -> None:
    result = run_cli(
        "phantom",
        str(tmp_path / "ds"),
        "--count",
        "2",
        "--seed",
        "7",
        "--shape",
        "48",
        "48",
        "32",
        "--spacing",
        "0.3",
    )

    assert result.returncode == 0, result.stderr
    images = sorted(p.name for p in (tmp_path / "ds" / "imagesTr").iterdir())
    labels = sorted(p.name for p in (tmp_path / "ds" / "labelsTr").iterdir())
    assert images == ["cbct_000_0000.nii.gz", "cbct_001_0000.nii.gz"]
    assert labels == ["cbct_000.nii.gz", "cbct_001.nii.gz"]
    dataset = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert dataset["labels"] == {"background": 0, "jaw": 1, "teeth": 2}
    image = nib.load(tmp_path / "ds" / "imagesTr" / images[0])
    assert image.shape == (48, 48, 32)
    assert np.allclose(image.header.get_zooms(), 0.3)


def test_predict_writes_a_mask_with_the_input_geometry(tmp_path: Path) -> None:
    scan = scans.make_scan(tmp_path / "in.nii.gz", shape=(64, 64, 48))

    result = run_cli(
        "predict",
        str(scan),
        str(tmp_path / "out.nii.gz"),
        "--model",
        "threshold",
        "--json",
    )

    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["model"] == "threshold-v1"
    assert stats["labels"]["jaw"]["voxels"] > 0
    assert stats["labels"]["teeth"]["voxels"] > 0
    mask = nib.load(tmp_path / "out.nii.gz")
    assert mask.shape == (64, 64, 48)
    assert np.allclose(mask.affine, nib.load(scan).affine)


def test_predict_makes_the_mask_folder(tmp_path: Path) -> None:
    scan = scans.make_scan(tmp_path / "in.nii.gz", shape=(32, 32, 24))
    out = tmp_path / "new" / "folder" / "out.nii.gz"

    result = run_cli("predict", str(scan), str(out), "--model", "threshold")

    assert result.returncode == 0, result.stderr
    assert nib.load(out).shape == (32, 32, 24)


def test_predict_refuses_a_mask_path_that_is_not_nifti(tmp_path: Path) -> None:
    scan = scans.make_scan(tmp_path / "in.nii.gz", shape=(32, 32, 24))

    result = run_cli("predict", str(scan), str(tmp_path / "out.png"))

    assert result.returncode == 1
    assert result.stderr.startswith("error: Expected the mask's path to end in .nii")


def test_an_unwritable_mask_path_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    scan = scans.make_scan(tmp_path / "in.nii.gz", shape=(32, 32, 24))
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")

    result = run_cli(
        "predict", str(scan), str(blocker / "out.nii.gz"), "--model", "threshold"
    )

    assert result.returncode == 1
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr
    assert str(blocker) in result.stderr


def test_predict_rejects_a_bad_scan_with_a_sentence(tmp_path: Path) -> None:
    bad = scans.make_huge_dims(tmp_path / "huge.nii.gz")

    result = run_cli("predict", str(bad), str(tmp_path / "out.nii.gz"))

    assert result.returncode == 1
    assert result.stderr.startswith("error: Expected")
    assert not (tmp_path / "out.nii.gz").exists()


def test_worker_refuses_to_start_with_an_unknown_model(tmp_path: Path) -> None:
    result = run_cli(
        "worker",
        "--queue",
        str(tmp_path / "q.db"),
        "--input",
        str(tmp_path / "in"),
        "--output",
        str(tmp_path / "out"),
        "--model",
        "no-such-model",
    )

    assert result.returncode == 1
    assert "error:" in result.stderr and "no-such-model" in result.stderr


def test_worker_refuses_a_queue_url_it_cannot_open(tmp_path: Path) -> None:
    result = run_cli(
        "worker",
        "--queue",
        "amqp://broker/scans",
        "--input",
        str(tmp_path / "in"),
        "--output",
        str(tmp_path / "out"),
    )

    assert result.returncode == 1
    assert result.stderr.startswith("error: Expected a queue URL")


def test_worker_processes_a_queue_until_idle(tmp_path: Path) -> None:
    submitted = run_cli(
        "submit",
        str(scans.make_scan(tmp_path / "a.nii.gz")),
        "--dir",
        str(tmp_path / "run"),
    )
    assert submitted.returncode == 0, submitted.stderr

    result = run_cli(
        "worker",
        "--queue",
        str(tmp_path / "run" / "queue.db"),
        "--input",
        str(tmp_path / "run" / "input"),
        "--output",
        str(tmp_path / "run" / "outbox"),
        "--wait-seconds",
        "0",
        "--exit-when-idle",
    )

    assert result.returncode == 0, result.stderr
    outputs = sorted(p.name for p in (tmp_path / "run" / "outbox").glob("a.*"))
    assert len(outputs) == 2
    assert any(name.endswith(".mask.nii.gz") for name in outputs)
    assert any(name.endswith(".json") for name in outputs)
