"""Model specs: kinds, options, post-processing, and the install without torch."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from scanpipe.errors import ModelError
from scanpipe.models import load_segmenter
from scanpipe.models.builtin import BuiltinSegmenter
from scanpipe.models.engine import OnnxSegmenter
from scanpipe.models.postprocess import (
    LabelRule,
    PostprocessedSegmenter,
    apply_rules,
    parse_rules,
)
from tests.models.nnunet_folders import BUILTIN_ONNX

LABELS = {1: "jaw", 2: "teeth"}
HAS_NNUNET = all(
    importlib.util.find_spec(name) is not None for name in ("torch", "nnunetv2")
)


def test_builtin_is_the_engine_on_the_shipped_export() -> None:
    segmenter = load_segmenter("builtin?mirror=0&threads=1&step=0.75")

    assert isinstance(segmenter, BuiltinSegmenter)
    assert (segmenter.mirror, segmenter.step) == (False, 0.75)
    assert segmenter.model_id.startswith("builtin-")
    assert segmenter.labels == LABELS


def test_onnx_kind_takes_a_path_and_options() -> None:
    segmenter = load_segmenter(f"onnx:{BUILTIN_ONNX}?mirror=off&threads=1")

    assert isinstance(segmenter, OnnxSegmenter)
    assert segmenter.mirror is False
    assert segmenter.describe()["backend"] == "onnx"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        pytest.param("onnx", "model folder after 'onnx:'", id="onnx-without-path"),
        pytest.param("builtin:mirror=0", "after '?'", id="builtin-colon-options"),
        pytest.param("builtin?mirorr=0", "mirorr", id="misspelt-option"),
        pytest.param("builtin?mirror", "key=value", id="option-without-value"),
        pytest.param("builtin?step=2", "step", id="step-out-of-range"),
        pytest.param("builtin?mirror=0&mirror=1", "twice", id="option-twice"),
        pytest.param("threshold?bone=3", "threshold:key=value", id="threshold-query"),
        pytest.param("unet", "builtin, nnunet, onnx, threshold", id="unknown-kind"),
        pytest.param("builtin?keep_largest=nerve", "nerve", id="unknown-label"),
        pytest.param("builtin?min_island_mm3=teeth:-1", "min_island_mm3", id="neg"),
    ],
)
def test_bad_specs_say_what_was_expected(spec: str, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        load_segmenter(spec)


def test_missing_onnx_folder_is_named() -> None:
    with pytest.raises(ModelError, match="no-such-model"):
        load_segmenter("onnx:/no-such-model?threads=1")


# --- post-processing ---------------------------------------------------------


def make_mask() -> np.ndarray:
    """Two jaw pieces (27 and 8 voxels) and two teeth pieces (8 and 1 voxel)."""
    mask = np.zeros((12, 12, 12), np.uint8)
    mask[0:3, 0:3, 0:3] = 1
    mask[8:10, 8:10, 8:10] = 1
    mask[5:7, 0:2, 5:7] = 2
    mask[0, 11, 11] = 2
    return mask


def test_keep_largest_per_label_leaves_other_labels_alone() -> None:
    out = apply_rules(make_mask(), (1.0, 1.0, 1.0), {1: LabelRule(keep_largest=True)})

    assert int((out == 1).sum()) == 27
    assert int((out == 2).sum()) == 9
    assert int((out == 0).sum()) == 12**3 - 36


def test_islands_are_measured_in_cubic_millimetres() -> None:
    # At 0.5 mm a voxel is 0.125 mm³: the 8-voxel tooth is 1 mm³.
    rules = {2: LabelRule(min_island_mm3=0.5)}

    out = apply_rules(make_mask(), (0.5, 0.5, 0.5), rules)

    assert int((out == 2).sum()) == 8
    assert int((out == 1).sum()) == 35


def test_rules_parse_names_values_and_all() -> None:
    rules = parse_rules({"keep_largest": "all", "min_island_mm3": "2:5,jaw:1"}, LABELS)

    assert rules == {
        1: LabelRule(keep_largest=True, min_island_mm3=1.0),
        2: LabelRule(keep_largest=True, min_island_mm3=5.0),
    }
    assert parse_rules({"min_island_mm3": "3"}, LABELS) == {
        1: LabelRule(min_island_mm3=3.0),
        2: LabelRule(min_island_mm3=3.0),
    }
    assert parse_rules({}, LABELS) == {}


def test_spec_wraps_the_model_and_changes_its_id() -> None:
    plain = load_segmenter("builtin?mirror=0&threads=1")
    cleaned = load_segmenter("builtin?mirror=0&threads=1&keep_largest=jaw")

    assert isinstance(cleaned, PostprocessedSegmenter)
    assert cleaned.model_id.startswith(plain.model_id + "-pp")
    assert cleaned.describe()["postprocessing"] == {
        "jaw": {"keep_largest": True, "min_island_mm3": 0.0}
    }


def test_postprocessing_applies_to_the_threshold_model_too() -> None:
    from scanpipe.imaging.phantom import make_phantom
    from scanpipe.models.base import Volume

    image, _, affine = make_phantom((64, 64, 48), 0.4, 3)
    volume = Volume(image.astype(np.float32), affine, (0.4, 0.4, 0.4))
    segmenter = load_segmenter("threshold?keep_largest=teeth")

    labels = segmenter.segment(volume).labels

    import cc3d

    assert cc3d.connected_components(labels == 2, connectivity=26).max() == 1


# --- installs ----------------------------------------------------------------

#: Runs with torch and nnunetv2 made unimportable, as in the default install.
WITHOUT_TORCH = textwrap.dedent(
    """
    import sys
    for name in ("torch", "nnunetv2", "dynamic_network_architectures", "onnx"):
        sys.modules[name] = None
    from scanpipe.errors import ModelError
    from scanpipe.models import load_segmenter

    segmenter = load_segmenter("builtin?mirror=0&threads=1")
    print("loaded", segmenter.model_id)
    try:
        load_segmenter("nnunet:builtin")
    except ModelError as exc:
        print("refused", exc)
    """
)


def test_default_install_runs_builtin_and_explains_the_nnunet_extra() -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH],
        capture_output=True,
        text=True,
        check=True,
    )

    assert "loaded builtin-" in done.stdout
    assert "pip install 'scanpipe[nnunet]'" in done.stdout


def test_engine_does_not_import_torch() -> None:
    code = (
        "import sys; from scanpipe.models import load_segmenter; "
        "load_segmenter('builtin?threads=1'); "
        "print(sorted(m for m in ('torch', 'nnunetv2') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )

    assert done.stdout.strip() == "[]"


@pytest.mark.skipif(not HAS_NNUNET, reason="needs the nnunet extra")
def test_nnunet_builtin_runs_the_shipped_folder_with_nnunet() -> None:
    segmenter = load_segmenter("nnunet:builtin?mirror=0&threads=1&keep_largest=jaw")

    described = segmenter.describe()
    assert described["backend"] == "nnunet"
    assert described["folds"] == ["0"]
    assert "postprocessing" in described


def test_builtin_mirrors_only_when_asked() -> None:
    plain = load_segmenter("builtin?threads=1")
    mirrored = load_segmenter("builtin?mirror=1&threads=1")

    assert isinstance(plain, BuiltinSegmenter) and plain.mirror is False
    assert isinstance(mirrored, BuiltinSegmenter) and mirrored.mirror is True
    assert plain.model_id != mirrored.model_id
