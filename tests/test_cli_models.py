"""``scanpipe export``, ``evaluate`` and ``tradeoff`` as users type them."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.models.nnunet_folders import BUILTIN_ONNX

HAS_NNUNET = all(
    importlib.util.find_spec(name) is not None for name in ("torch", "nnunetv2")
)
needs_nnunet = pytest.mark.skipif(not HAS_NNUNET, reason="needs the nnunet extra")


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scanpipe", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "SCANPIPE_LOG_LEVEL": "WARNING", "OMP_NUM_THREADS": "1"},
    )


def write_labels(path: Path, labels: np.ndarray, spacing: float = 0.5) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(
        nib.Nifti1Image(labels.astype(np.uint8), np.diag([spacing] * 3 + [1])), path
    )
    return path


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small phantom with ground truth, in nnU-Net's raw layout."""
    root = tmp_path_factory.mktemp("cases") / "phantoms"
    result = run_cli(
        "phantom", str(root), "--count", "1", "--seed", "3", "--shape", "64", "64", "48"
    )
    assert result.returncode == 0, result.stderr
    return root


# --- evaluate ---------------------------------------------------------------


def test_evaluate_reports_dice_and_hd95_in_millimetres(tmp_path: Path) -> None:
    truth = np.zeros((20, 20, 20), np.uint8)
    truth[5:15, 5:15, 5:15] = 1
    truth[2:4, 2:4, 2:4] = 2
    pred = truth.copy()
    pred[5:15, 5:15, 15:17] = 1  # the cube grows by two slices: 1 mm at 0.5 mm
    write_labels(tmp_path / "gt" / "case_a.nii.gz", truth)
    write_labels(tmp_path / "pred" / "case_a.nii.gz", pred)
    (tmp_path / "dataset.json").write_text(
        json.dumps({"labels": {"background": 0, "jaw": 1, "teeth": 2}})
    )
    shutil.move(tmp_path / "dataset.json", tmp_path / "gt" / "dataset.json")

    result = run_cli("evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "--json")

    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    (case,) = doc["cases"]
    assert case["case"] == "case_a"
    assert case["dice"]["jaw"] == pytest.approx(2 * 1000 / (1000 + 1200))
    assert case["dice"]["teeth"] == 1.0
    assert case["hd95_mm"]["jaw"] == pytest.approx(1.0)
    assert case["hd95_mm"]["teeth"] == 0.0
    assert doc["mean"]["jaw"]["dice"] == pytest.approx(case["dice"]["jaw"])

    text = run_cli("evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"))
    assert text.returncode == 0, text.stderr
    assert "jaw Dice" in text.stdout and "1.00 mm" in text.stdout


def test_evaluate_reads_a_dataset_root_and_predictions_named_after_images(
    tmp_path: Path, cases: Path
) -> None:
    # Predictions as `scanpipe predict imagesTr/NAME_0000.nii.gz pred/...`
    # leaves them when the user keeps the image's name.
    pred = tmp_path / "pred"
    pred.mkdir()
    for truth in (cases / "labelsTr").glob("*.nii.gz"):
        name = truth.name.removesuffix(".nii.gz")
        shutil.copy(truth, pred / f"{name}_0000.nii.gz")

    result = run_cli("evaluate", str(pred), str(cases), "--json")

    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert len(doc["cases"]) == len(list((cases / "labelsTr").glob("*.nii.gz")))
    assert doc["mean"]["jaw"] == {"dice": 1.0, "hd95_mm": 0.0}
    assert doc["mean"]["teeth"] == {"dice": 1.0, "hd95_mm": 0.0}


def test_evaluate_names_a_missing_prediction(tmp_path: Path) -> None:
    mask = np.zeros((8, 8, 8), np.uint8)
    write_labels(tmp_path / "gt" / "one.nii.gz", mask)
    write_labels(tmp_path / "gt" / "two.nii.gz", mask)
    write_labels(tmp_path / "pred" / "one.nii.gz", mask)

    result = run_cli("evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"))

    assert result.returncode == 1
    assert result.stderr.startswith("error: Expected a prediction")
    assert "two.nii.gz" in result.stderr


def test_evaluate_refuses_a_prediction_of_another_shape(tmp_path: Path) -> None:
    write_labels(tmp_path / "gt" / "one.nii.gz", np.zeros((8, 8, 8), np.uint8))
    write_labels(tmp_path / "pred" / "one.nii.gz", np.zeros((8, 8, 6), np.uint8))

    result = run_cli("evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"))

    assert result.returncode == 1
    assert "shape" in result.stderr and "one.nii.gz" in result.stderr


# --- tradeoff ---------------------------------------------------------------


def test_tradeoff_prices_each_setting_of_the_engine(cases: Path) -> None:
    result = run_cli(
        "tradeoff",
        str(cases),
        "--model",
        "builtin?threads=1",
        "--backends",
        "engine",
        "--mirror",
        "off,on",
        "--json",
    )

    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["instance_type"] == "g5.xlarge"
    rows = doc["settings"]
    assert [(r["backend"], r["mirror"], r["step"]) for r in rows] == [
        ("engine", False, 0.5),
        ("engine", True, 0.5),
    ]
    for row in rows:
        assert min(row["dice"]["jaw"], row["dice"]["teeth"]) >= 0.9
        assert row["cost_usd_per_scan"] == pytest.approx(
            row["seconds_per_scan"] * doc["usd_per_hour"] / 3600
        )
    assert rows[0]["model_id"] != rows[1]["model_id"]


def test_tradeoff_prints_a_table(cases: Path) -> None:
    result = run_cli(
        "tradeoff",
        str(cases),
        "--model",
        "builtin?threads=1",
        "--backends",
        "engine",
        "--mirror",
        "off",
        "--steps",
        "0.5,1",
    )

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "teeth Dice" in lines[0] and "$/scan" in lines[0]
    assert len([line for line in lines if line.startswith("engine")]) == 2
    assert "g5.xlarge" in lines[-1]


def test_tradeoff_refuses_a_model_without_settings(cases: Path) -> None:
    result = run_cli("tradeoff", str(cases), "--model", "threshold")

    assert result.returncode == 1
    assert "error:" in result.stderr and "threshold" in result.stderr


def test_tradeoff_refuses_nnunet_for_an_export(cases: Path) -> None:
    result = run_cli(
        "tradeoff",
        str(cases),
        "--model",
        f"onnx:{BUILTIN_ONNX}",
        "--backends",
        "nnunet",
    )

    assert result.returncode == 1
    assert "runs only on ['engine']" in result.stderr


def test_tradeoff_needs_ground_truth(tmp_path: Path) -> None:
    (tmp_path / "imagesTr").mkdir()

    result = run_cli("tradeoff", str(tmp_path))

    assert result.returncode == 1
    assert "labelsTr" in result.stderr


@needs_nnunet
def test_tradeoff_compares_engine_and_nnunet(cases: Path) -> None:
    result = run_cli(
        "tradeoff",
        str(cases),
        "--model",
        "builtin?threads=1",
        "--mirror",
        "off",
        "--json",
    )

    assert result.returncode == 0, result.stderr
    engine, nnunet = json.loads(result.stdout)["settings"]
    assert (engine["backend"], nnunet["backend"]) == ("engine", "nnunet")
    for label in ("jaw", "teeth"):
        assert engine["dice"][label] == pytest.approx(nnunet["dice"][label], abs=1e-3)


# --- export -----------------------------------------------------------------


@needs_nnunet
def test_export_writes_a_folder_the_engine_runs(tmp_path: Path, cases: Path) -> None:
    from tests.models.nnunet_folders import make_model_folder

    model = make_model_folder(tmp_path / "model", folds=("0", "1"))

    result = run_cli("export", str(model), str(tmp_path / "out"), "--folds", "0,1")

    assert result.returncode == 0, result.stderr
    assert "exported folds 0,1" in result.stdout
    image = next((cases / "imagesTr").iterdir())
    predicted = run_cli(
        "predict",
        str(image),
        str(tmp_path / "mask.nii.gz"),
        "--model",
        f"onnx:{tmp_path / 'out'}?threads=1&mirror=0",
        "--json",
    )
    assert predicted.returncode == 0, predicted.stderr
    assert json.loads(predicted.stdout)["model"].startswith("onnx-")


@needs_nnunet
def test_export_names_the_checkpoint_that_does_not_match(tmp_path: Path) -> None:
    from tests.models.nnunet_folders import make_model_folder, rewrite_plans

    model = make_model_folder(tmp_path / "model")

    def widen(plans: dict) -> None:
        kwargs = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
        kwargs["features_per_stage"] = [6, 12]

    rewrite_plans(model, widen)

    result = run_cli("export", str(model), str(tmp_path / "out"))

    assert result.returncode == 1
    assert "fold_0/checkpoint_final.pth" in result.stderr


#: The CLI with torch and nnunetv2 unimportable, as in the default install.
WITHOUT_TORCH = (
    "import sys\n"
    "for name in ('torch', 'nnunetv2', 'onnx'):\n"
    "    sys.modules[name] = None\n"
    "from scanpipe.cli import main\n"
    "main()\n"
)


def test_export_without_the_extra_says_how_to_install_it(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            WITHOUT_TORCH,
            "export",
            str(BUILTIN_ONNX),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 1
    assert "pip install 'scanpipe[nnunet]'" in result.stderr


# --- bad models stop the worker at start ------------------------------------


def test_worker_refuses_to_start_on_a_broken_model_folder(tmp_path: Path) -> None:
    folder = shutil.copytree(BUILTIN_ONNX, tmp_path / "model")
    plans = json.loads((folder / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["normalization_schemes"] = ["MRNorm"]
    (folder / "plans.json").write_text(json.dumps(plans))

    result = run_cli(
        "worker",
        "--queue",
        str(tmp_path / "q.db"),
        "--input",
        str(tmp_path / "in"),
        "--output",
        str(tmp_path / "out"),
        "--model",
        f"onnx:{folder}",
    )

    assert result.returncode == 1
    assert result.stderr.startswith("error: Expected a normalization scheme")
    assert str(folder / "plans.json") in result.stderr
