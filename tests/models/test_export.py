"""Exporting nnU-Net v2 model folders for the engine, and refusing bad ones."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from scanpipe.errors import ModelError
from scanpipe.models.engine import OnnxSegmenter
from scanpipe.models.engine.manifest import read_manifest
from tests.models.nnunet_folders import make_model_folder, make_plans, rewrite_plans

torch = pytest.importorskip(
    "torch", reason="torch is not installed (the nnunet extra); export needs it"
)
pytest.importorskip("onnx", reason="onnx is not installed (the nnunet extra)")

from scanpipe.models.export import export_model  # noqa: E402
from scanpipe.models.torch_network import (  # noqa: E402
    build_plain_network,
    load_checkpoint,
)


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def test_export_averages_all_folds_in_one_graph(tmp_path: Path) -> None:
    model = make_model_folder(tmp_path / "model", folds=("0", "1"))

    export_model(model, tmp_path / "out")

    manifest = read_manifest(tmp_path / "out")
    assert manifest.folds == ["0", "1"]
    assert manifest.configuration == "3d_fullres"
    assert manifest.mirror_axes == [0, 1, 2]
    assert manifest.trainer_name == "nnUNetTrainer"
    for name in ("plans.json", "dataset.json", "network.onnx"):
        assert (tmp_path / "out" / name).is_file()

    # One patch through the graph equals the mean of the folds in torch.
    plans = make_plans()
    architecture = plans["configurations"]["3d_fullres"]["architecture"]
    patch = np.random.default_rng(0).normal(size=(1, 1, 32, 32, 32)).astype(np.float32)
    expected = []
    for fold in ("0", "1"):
        network = build_plain_network(architecture, 1, 3)
        checkpoint = load_checkpoint(model / f"fold_{fold}" / "checkpoint_final.pth")
        network.load_state_dict(checkpoint.weights)
        with torch.no_grad():
            expected.append(network.eval()(torch.from_numpy(patch)).numpy())
    engine = OnnxSegmenter(tmp_path / "out", threads=1)
    found = engine._network(patch)
    np.testing.assert_allclose(found, np.mean(expected, axis=0), atol=1e-4)


def test_export_finds_numbered_folds_only(tmp_path: Path) -> None:
    model = make_model_folder(tmp_path / "model", folds=("0", "2", "all"))

    export_model(model, tmp_path / "out", verify=False)

    assert read_manifest(tmp_path / "out").folds == ["0", "2"]


def test_export_refuses_to_overwrite(tmp_path: Path) -> None:
    model = make_model_folder(tmp_path / "model")
    export_model(model, tmp_path / "out", verify=False)

    with pytest.raises(ModelError, match="holds an export"):
        export_model(model, tmp_path / "out")


def test_missing_checkpoint_names_the_file(tmp_path: Path) -> None:
    model = make_model_folder(tmp_path / "model")

    with pytest.raises(ModelError, match="fold_3"):
        export_model(model, tmp_path / "out", folds=["3"])


def test_checkpoint_that_does_not_match_plans_is_refused(tmp_path: Path) -> None:
    model = make_model_folder(tmp_path / "model")

    def widen(plans: dict) -> None:
        kwargs = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
        kwargs["features_per_stage"] = [6, 12]

    rewrite_plans(model, widen)

    with pytest.raises(ModelError) as caught:
        export_model(model, tmp_path / "out")
    assert "checkpoint_final.pth" in str(caught.value)
    assert "match" in str(caught.value)


def test_plans_may_only_name_torch_and_network_classes(tmp_path: Path) -> None:
    model = make_model_folder(tmp_path / "model")

    def hijack(plans: dict) -> None:
        architecture = plans["configurations"]["3d_fullres"]["architecture"]
        architecture["network_class_name"] = "os.system"

    rewrite_plans(model, hijack)

    with pytest.raises(ModelError, match=r"os\.system"):
        export_model(model, tmp_path / "out")


def test_checkpoint_needing_full_unpickling_requires_trust(tmp_path: Path) -> None:
    model = make_model_folder(tmp_path / "model")
    path = model / "fold_0" / "checkpoint_final.pth"
    checkpoint = torch.load(path, weights_only=True)
    # nnU-Net's own trainers store objects like this one in init_args.
    checkpoint["init_args"]["options"] = argparse.Namespace(device="cpu")
    torch.save(checkpoint, path)

    with pytest.raises(ModelError, match="trust"):
        export_model(model, tmp_path / "refused")

    export_model(model, tmp_path / "trusted", trust=True, verify=False)
    assert (tmp_path / "trusted" / "network.onnx").is_file()


def test_folds_of_different_configurations_are_refused(tmp_path: Path) -> None:
    model = make_model_folder(tmp_path / "model", folds=("0", "1"))
    path = model / "fold_1" / "checkpoint_final.pth"
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["init_args"]["configuration"] = "3d_lowres"
    torch.save(checkpoint, path)

    with pytest.raises(ModelError, match="3d_lowres"):
        export_model(model, tmp_path / "out")


def test_manifest_is_plain_json(tmp_path: Path) -> None:
    model = make_model_folder(tmp_path / "model")

    path = export_model(model, tmp_path / "out", verify=False)

    data = json.loads(path.read_text())
    assert data["format"] == "scanpipe-onnx"
    assert data["version"] == 1
    assert len(data["sha256"]) == 64
