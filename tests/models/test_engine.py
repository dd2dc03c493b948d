"""The ONNX engine on its own: the builtin model, bad folders, odd volumes.

These tests need no torch: they run the shipped export of the builtin model,
or copies of it broken on purpose.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scanpipe.errors import ModelError, ScanRejected
from scanpipe.imaging.phantom import JAW, TEETH, make_phantom
from scanpipe.models.base import Volume
from scanpipe.models.builtin import BuiltinSegmenter
from scanpipe.models.engine import OnnxSegmenter
from scanpipe.models.engine.plans import ChannelNormalization
from scanpipe.models.engine.preprocessing import crop_to_nonzero, normalize
from scanpipe.models.engine.resampling import compute_new_shape, resize
from scanpipe.models.engine.sliding_window import (
    compute_steps,
    gaussian_importance,
    mirror_combinations,
    pad_to_patch,
)
from tests.models.nnunet_folders import BUILTIN_ONNX


@pytest.fixture(scope="module")
def builtin() -> BuiltinSegmenter:
    return BuiltinSegmenter(mirror=False, threads=1)


def make_volume(
    shape: tuple[int, int, int] = (96, 96, 64),
    spacing: tuple[float, float, float] = (0.4, 0.4, 0.4),
    seed: int = 11,
) -> tuple[Volume, np.ndarray]:
    """A phantom drawn at 0.4 mm, labelled as if scanned at ``spacing``."""
    image, labels, _ = make_phantom(shape, 0.4, seed)
    hu = np.rint(image).astype(np.float32)
    return Volume(hu, np.diag([*spacing, 1.0]), spacing), labels


def dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    x, y = a == label, b == label
    return 2 * float((x & y).sum()) / max(int(x.sum() + y.sum()), 1)


# --- the builtin model -----------------------------------------------------


def test_builtin_segments_an_unseen_phantom(builtin: BuiltinSegmenter) -> None:
    volume, truth = make_volume(seed=123456)

    result = builtin.segment(volume)

    assert result.labels.shape == volume.data.shape
    assert result.labels.dtype == np.uint8
    assert dice(result.labels, truth, JAW) >= 0.9
    assert dice(result.labels, truth, TEETH) >= 0.9
    assert set(result.seconds) == {"inference", "postprocess"}


def test_builtin_describes_itself(builtin: BuiltinSegmenter) -> None:
    described = builtin.describe()

    assert builtin.labels == {1: "jaw", 2: "teeth"}
    assert described["backend"] == "onnx"
    assert described["folds"] == ["0"]
    assert described["mirror"] is False
    assert str(described["model_id"]).startswith("builtin-")


def test_model_id_follows_settings_that_change_masks(builtin: BuiltinSegmenter) -> None:
    same = BuiltinSegmenter(mirror=False, threads=1)
    mirrored = BuiltinSegmenter(mirror=True, threads=1)
    coarser = BuiltinSegmenter(mirror=False, step=0.75, threads=1)

    assert same.model_id == builtin.model_id
    assert len({builtin.model_id, mirrored.model_id, coarser.model_id}) == 3


def test_spec_options_are_parsed_and_checked() -> None:
    segmenter = OnnxSegmenter.from_spec(
        str(BUILTIN_ONNX), {"mirror": "0", "step": "0.75", "threads": "1"}
    )
    assert (segmenter.mirror, segmenter.step) == (False, 0.75)

    with pytest.raises(ModelError, match="mirorr"):
        OnnxSegmenter.from_spec(str(BUILTIN_ONNX), {"mirorr": "0"})
    with pytest.raises(ModelError, match="step"):
        OnnxSegmenter.from_spec(str(BUILTIN_ONNX), {"step": "1.5"})
    with pytest.raises(ModelError, match="device"):
        OnnxSegmenter.from_spec(str(BUILTIN_ONNX), {"device": "tpu"})
    with pytest.raises(ModelError, match="runtime"):
        OnnxSegmenter.from_spec(str(BUILTIN_ONNX), {"runtime": "tensorrt"})
    with pytest.raises(ModelError, match="CPU only"):
        OnnxSegmenter.from_spec(
            str(BUILTIN_ONNX), {"runtime": "openvino", "device": "cuda"}
        )


def test_onnxruntime_is_the_default_runtime() -> None:
    segmenter = OnnxSegmenter.from_spec(str(BUILTIN_ONNX), {"threads": "1"})
    assert segmenter.describe()["providers"] == ["CPUExecutionProvider"]


@pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None,
    reason="OpenVINO is not installed (pip install 'scanpipe[openvino]')",
)
def test_openvino_runs_the_same_model_to_the_same_masks() -> None:
    openvino = OnnxSegmenter.from_spec(
        str(BUILTIN_ONNX), {"mirror": "0", "threads": "1", "runtime": "openvino"}
    )
    onnxruntime = OnnxSegmenter(BUILTIN_ONNX, mirror=False, threads=1)
    volume, _ = make_volume(seed=21)

    assert openvino.describe()["providers"] == ["OpenVINO:CPU"]
    # The runtime changes rounding, not the model: outputs keep their keys.
    assert openvino.model_id == onnxruntime.model_id
    ours, theirs = openvino.segment(volume).labels, onnxruntime.segment(volume).labels
    for label in (JAW, TEETH):
        assert dice(ours, theirs, label) >= 0.998


def test_openvino_missing_says_how_to_install_it() -> None:
    code = (
        "import sys\n"
        "sys.modules['openvino'] = None\n"
        "from scanpipe.models.engine import OnnxSegmenter\n"
        f"OnnxSegmenter({str(BUILTIN_ONNX)!r}, runtime='openvino')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "pip install 'scanpipe[openvino]'" in result.stderr


# --- volumes of awkward shapes ---------------------------------------------


@pytest.mark.parametrize(
    ("shape", "spacing"),
    [
        pytest.param((20, 24, 18), (0.4, 0.4, 0.4), id="smaller-than-patch"),
        pytest.param((96, 96, 1), (0.4, 0.4, 0.4), id="one-slice"),
        pytest.param((1, 40, 30), (0.4, 0.4, 0.4), id="one-voxel-x"),
        pytest.param((40, 40, 4), (0.4, 0.4, 8.0), id="extreme-anisotropy"),
    ],
)
def test_awkward_volumes_keep_their_shape(
    builtin: BuiltinSegmenter,
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
) -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(500, 800, shape).astype(np.float32)
    volume = Volume(data, np.diag([*spacing, 1.0]), spacing)

    labels = builtin.segment(volume).labels

    assert labels.shape == shape
    assert labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, JAW, TEETH}


def test_axis_that_resamples_to_nothing_is_rejected(builtin: BuiltinSegmenter) -> None:
    volume = Volume(
        np.zeros((32, 32, 1), np.float32), np.eye(4), spacing=(0.4, 0.4, 0.1)
    )

    with pytest.raises(ScanRejected, match="at least one voxel") as caught:
        builtin.segment(volume)
    assert caught.value.reason == "too_small"


def test_volume_that_resamples_too_large_is_rejected(builtin: BuiltinSegmenter) -> None:
    volume = Volume(
        np.ones((64, 64, 64), np.float32), np.eye(4), spacing=(8.0, 8.0, 8.0)
    )

    with pytest.raises(ScanRejected, match="at most") as caught:
        builtin.segment(volume)
    assert caught.value.reason == "too_large"


# --- bad model folders -----------------------------------------------------


def _edit_json(name: str, change: Callable[[dict[str, Any]], None]) -> Callable:
    def apply(folder: Path) -> None:
        data = json.loads((folder / name).read_text())
        change(data)
        (folder / name).write_text(json.dumps(data))

    return apply


def _config(plans: dict[str, Any]) -> dict[str, Any]:
    return plans["configurations"]["3d_fullres"]


def _replace_network(folder: Path) -> None:
    (folder / "network.onnx").write_bytes(b"not a network")
    _edit_json("manifest.json", _set_sha(folder))(folder)


def _set_sha(folder: Path) -> Callable[[dict[str, Any]], None]:
    from scanpipe.models.engine.manifest import file_sha256

    def change(manifest: dict[str, Any]) -> None:
        manifest["sha256"] = file_sha256(folder / "network.onnx")

    return change


BAD_FOLDERS = [
    pytest.param(
        lambda f: (f / "manifest.json").unlink(),
        ("manifest.json", "missing"),
        id="no-manifest",
    ),
    pytest.param(
        lambda f: (f / "manifest.json").write_text("{"),
        ("manifest.json", "JSON"),
        id="manifest-not-json",
    ),
    pytest.param(
        _edit_json("manifest.json", lambda m: m.update(version=99)),
        ("manifest.json", "version"),
        id="manifest-version",
    ),
    pytest.param(
        lambda f: (f / "network.onnx").unlink(),
        ("network.onnx", "missing"),
        id="no-network",
    ),
    pytest.param(
        lambda f: (f / "network.onnx").write_bytes(
            (f / "network.onnx").read_bytes()[:-10]
        ),
        ("network.onnx", "sha256"),
        id="network-damaged",
    ),
    pytest.param(
        _replace_network,
        ("network.onnx", "refused it"),
        id="network-not-onnx",
    ),
    pytest.param(
        lambda f: (f / "plans.json").unlink(),
        ("plans.json", "missing"),
        id="no-plans",
    ),
    pytest.param(
        _edit_json(
            "plans.json",
            lambda p: _config(p).update(normalization_schemes=["MRNormalization"]),
        ),
        ("plans.json", "MRNormalization"),
        id="unknown-normalization",
    ),
    pytest.param(
        _edit_json(
            "plans.json",
            lambda p: p["foreground_intensity_properties_per_channel"]["0"].pop("std"),
        ),
        ("plans.json", "foreground_intensity_properties_per_channel"),
        id="ct-without-intensities",
    ),
    pytest.param(
        _edit_json(
            "plans.json",
            lambda p: _config(p).update(resampling_fn_data="my_resampler"),
        ),
        ("plans.json", "my_resampler"),
        id="unknown-resampling",
    ),
    pytest.param(
        _edit_json(
            "plans.json",
            lambda p: p.update(configurations={"2d": _config(p)}),
        ),
        ("plans.json", "3d_fullres"),
        id="configuration-missing",
    ),
    pytest.param(
        _edit_json(
            "plans.json",
            lambda p: _config(p).update(patch_size=[32, 32, 32]),
        ),
        ("network.onnx", "plans.json"),
        id="patch-size-mismatch",
    ),
    pytest.param(
        _edit_json(
            "plans.json",
            lambda p: p.update(image_reader_writer="NibabelIOWithReorient"),
        ),
        ("plans.json", "NibabelIOWithReorient"),
        id="reorienting-reader",
    ),
    pytest.param(
        _edit_json(
            "dataset.json",
            lambda d: d["labels"].update(jaw=[1, 2]),
        ),
        ("dataset.json", "regions"),
        id="region-labels",
    ),
    pytest.param(
        _edit_json("dataset.json", lambda d: d["labels"].update(nerve=3)),
        ("network.onnx", "dataset.json"),
        id="label-count-mismatch",
    ),
    pytest.param(
        _edit_json("dataset.json", lambda d: d["labels"].update(teeth=5)),
        ("dataset.json", "consecutive"),
        id="label-gap",
    ),
]


@pytest.mark.parametrize(("damage", "expected"), BAD_FOLDERS)
def test_bad_model_folder_names_file_and_problem(
    tmp_path: Path,
    damage: Callable[[Path], None],
    expected: tuple[str, str],
) -> None:
    folder = tmp_path / "model"
    shutil.copytree(BUILTIN_ONNX, folder)
    damage(folder)

    with pytest.raises(ModelError) as caught:
        OnnxSegmenter(folder, threads=1)

    message = str(caught.value)
    for part in expected:
        assert part in message


def test_nnunet_folder_given_to_engine_points_to_export(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("plans.json", "dataset.json"):
        shutil.copy(BUILTIN_ONNX / name, folder / name)

    with pytest.raises(ModelError, match="scanpipe export"):
        OnnxSegmenter(folder)


def test_missing_folder_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no-such"):
        OnnxSegmenter(tmp_path / "no-such")


# --- the pure parts, against values from nnU-Net ---------------------------


@pytest.mark.parametrize(
    ("image", "tile", "step", "expected"),
    [
        pytest.param((110,), (64,), 0.5, [[0, 23, 46]], id="nnunet-docstring"),
        pytest.param((64,), (64,), 0.5, [[0]], id="exact-fit"),
        pytest.param((96, 65), (64, 64), 0.5, [[0, 32], [0, 1]], id="two-axes"),
        pytest.param((200,), (64,), 1.0, [[0, 45, 91, 136]], id="no-overlap"),
    ],
)
def test_sliding_window_steps(
    image: tuple[int, ...], tile: tuple[int, ...], step: float, expected: list
) -> None:
    assert compute_steps(image, tile, step) == expected


def test_gaussian_importance_peaks_at_ten_and_is_never_zero() -> None:
    weights = gaussian_importance((16, 20, 24))

    assert weights.shape == (16, 20, 24)
    assert weights[8, 10, 12] == pytest.approx(10.0)
    assert weights.min() > 0
    assert np.array_equal(weights[1:], weights[1:][::-1])


def test_padding_centres_the_image_and_reverts() -> None:
    data = np.arange(2 * 3 * 5 * 6, dtype=np.float32).reshape(2, 3, 5, 6)

    padded, revert = pad_to_patch(data, (4, 8, 6))

    assert padded.shape == (2, 4, 8, 6)
    assert np.array_equal(padded[(slice(None), *revert)], data)
    assert revert[1] == slice(1, 6)  # odd padding goes above, as nnU-Net


def test_mirror_combinations_match_nnunet_order() -> None:
    assert mirror_combinations(None) == [()]
    assert mirror_combinations((0, 1, 2)) == [
        (),
        (0,),
        (1,),
        (2,),
        (0, 1),
        (0, 2),
        (1, 2),
        (0, 1, 2),
    ]


def test_crop_to_nonzero_fills_holes_and_keeps_empty_cases() -> None:
    data = np.zeros((1, 10, 12, 14), np.float32)
    data[0, 2:8, 3:9, 4:10] = 1
    data[0, 4, 5, 6] = 0  # a hole inside stays inside

    cropped, mask, bbox = crop_to_nonzero(data)

    assert bbox == ((2, 8), (3, 9), (4, 10))
    assert cropped.shape == (1, 6, 6, 6)
    assert mask.all()
    assert crop_to_nonzero(np.zeros((1, 4, 5, 6), np.float32))[2] == (
        (0, 4),
        (0, 5),
        (0, 6),
    )


def test_ct_normalization_clips_then_standardises() -> None:
    scheme = ChannelNormalization(
        "CTNormalization",
        False,
        {"mean": 100.0, "std": 50.0, "percentile_00_5": 0.0, "percentile_99_5": 200.0},
    )
    image = np.array([-1000, 100, 150, 5000], np.float32)

    out = normalize(image, np.ones(4, bool), scheme)

    assert out.tolist() == [-2.0, 0.0, 1.0, 2.0]


def test_resampling_shape_and_range() -> None:
    image = np.random.default_rng(0).normal(size=(10, 12, 7))

    out = resize(image, (20, 6, 7), order=3)

    assert out.shape == (20, 6, 7)
    assert image.min() <= out.min() and out.max() <= image.max()
    assert compute_new_shape((10, 12, 7), (0.5, 0.5, 2.0), (0.4, 0.4, 0.4)) == (
        12,
        15,
        35,
    )


def test_resize_matches_scikit_image() -> None:
    transform = pytest.importorskip("skimage.transform")
    image = np.random.default_rng(1).normal(size=(9, 13, 11))

    for order, shape in ((3, (14, 8, 11)), (1, (5, 20, 16)), (0, (18, 13, 4))):
        expected = transform.resize(
            image, shape, order, mode="edge", anti_aliasing=False
        )
        assert np.array_equal(resize(image, shape, order), expected)
