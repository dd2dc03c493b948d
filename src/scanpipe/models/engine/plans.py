"""What the engine reads from an nnU-Net v2 ``plans.json`` and ``dataset.json``.

nnU-Net keeps every inference decision in these two files: the axis order the
network expects, the target spacing, how intensities are normalised, how
images and logits are resampled, the patch size and the labels. They are read
and checked once, when the model loads, so that an unusable folder stops the
worker at start with a message naming the file, instead of failing every
scan. Only what nnU-Net's default predictor does is accepted; anything else
(cascades, 2D, region-based labels, custom preprocessors) is refused with a
sentence saying so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scanpipe.errors import ModelError

#: Normalisation schemes of nnU-Net's default_normalization_schemes.
NORMALIZATION_SCHEMES = (
    "CTNormalization",
    "ZScoreNormalization",
    "NoNormalization",
    "RescaleTo01Normalization",
    "RGBTo01Normalization",
)
#: Readers that load NIfTI in the array order the engine gives the network.
#: Both return (Z, Y, X) of the NIfTI's (X, Y, Z) with the spacing reversed.
_PLAIN_READERS = ("SimpleITKIO", "NibabelIO")
_INTENSITY_KEYS = ("mean", "std", "percentile_00_5", "percentile_99_5")
_RESAMPLING_FN = "resample_data_or_seg_to_shape"
#: The configuration used when none is named: the one nnU-Net recommends
#: for 3D data and the only single-stage 3D one its planner writes.
DEFAULT_CONFIGURATION = "3d_fullres"


@dataclass(frozen=True)
class Resampling:
    """Arguments of nnU-Net's ``resample_data_or_seg_to_shape``."""

    order: int
    order_z: int
    force_separate_z: bool | None


@dataclass(frozen=True)
class ChannelNormalization:
    """How one input channel is normalised before the network sees it."""

    scheme: str
    use_mask: bool
    #: Foreground intensity statistics of the training set (CT scheme).
    properties: dict[str, float]


@dataclass(frozen=True)
class ModelPlans:
    """The inference settings of one configuration of an nnU-Net model.

    Spacing and patch size are in the network's axis order, that is after
    ``transpose_forward``, as nnU-Net stores them.
    """

    configuration: str
    patch_size: tuple[int, ...]
    spacing: tuple[float, ...]
    transpose_forward: tuple[int, int, int]
    transpose_backward: tuple[int, int, int]
    normalization: tuple[ChannelNormalization, ...]
    resample_data: Resampling
    resample_probabilities: Resampling
    #: Foreground labels by value, background excluded: {1: 'jaw', 2: 'teeth'}.
    labels: dict[int, str]
    #: Number of network outputs: background plus foreground labels.
    num_heads: int
    architecture: dict[str, Any]

    @property
    def input_channels(self) -> int:
        return len(self.normalization)


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object, translating every failure into ModelError."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ModelError(f"Expected {path}, but the file is missing.") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"Expected {path} to be JSON, but: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelError(
            f"Expected {path} to hold a JSON object, but found {type(data).__name__}."
        )
    return data


def load_plans(model_dir: Path, configuration: str | None = None) -> ModelPlans:
    """Read ``plans.json`` and ``dataset.json`` of a model folder.

    Args:
        model_dir: an nnU-Net model folder or an engine export of one.
        configuration: the configuration to use; by default ``3d_fullres``.

    Raises:
        ModelError: a file is missing or malformed, or the configuration
            asks for something nnU-Net's default predictor would not do.
    """
    plans_path = model_dir / "plans.json"
    dataset_path = model_dir / "dataset.json"
    plans = read_json(plans_path)
    dataset = read_json(dataset_path)
    return parse_plans(
        plans,
        dataset,
        configuration or DEFAULT_CONFIGURATION,
        plans_source=str(plans_path),
        dataset_source=str(dataset_path),
    )


def parse_plans(
    plans: dict[str, Any],
    dataset: dict[str, Any],
    configuration: str,
    *,
    plans_source: str = "plans.json",
    dataset_source: str = "dataset.json",
) -> ModelPlans:
    """Validate already-loaded plans; see :func:`load_plans`."""
    config = resolve_configuration(plans, configuration, source=plans_source)
    where = f"{plans_source} (configuration {configuration!r})"

    if config.get("previous_stage"):
        raise ModelError(
            f"Expected a single-stage configuration in {where}, but it is a "
            "cascade stage; cascades are not supported by the engine."
        )
    patch = _int_list(config, "patch_size", where)
    if len(patch) != 3:
        raise ModelError(
            f"Expected a 3D patch_size in {where}, but found {patch}; 2D "
            "configurations are not supported by the engine."
        )
    spacing = _float_list(config, "spacing", where)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ModelError(
            f"Expected three positive spacings in {where}, but found {spacing}."
        )
    preprocessor = config.get("preprocessor_name", "DefaultPreprocessor")
    if preprocessor != "DefaultPreprocessor":
        raise ModelError(
            f"Expected preprocessor_name 'DefaultPreprocessor' in {where}, but "
            f"found {preprocessor!r}, which the engine does not reproduce."
        )

    reader = plans.get("image_reader_writer", "SimpleITKIO")
    if reader not in _PLAIN_READERS:
        raise ModelError(
            f"Expected image_reader_writer SimpleITKIO or NibabelIO in "
            f"{plans_source}, but found {reader!r}; readers that reorient "
            "images are not supported by the engine."
        )
    forward = _permutation(plans, "transpose_forward", plans_source)
    backward = _permutation(plans, "transpose_backward", plans_source)
    if [forward[i] for i in backward] != [0, 1, 2]:
        raise ModelError(
            f"Expected transpose_backward to undo transpose_forward in "
            f"{plans_source}, but they are {forward} and {backward}."
        )

    labels, num_heads = parse_labels(dataset, dataset_source)
    normalization = _normalization(plans, config, dataset, where, plans_source)
    architecture = config.get("architecture")
    if not isinstance(architecture, dict):
        raise ModelError(
            f"Expected an architecture entry in {where}, but it is missing; "
            "plans from nnU-Net before v2.4 must be planned again."
        )
    return ModelPlans(
        configuration=configuration,
        patch_size=tuple(patch),
        spacing=tuple(spacing),
        transpose_forward=(forward[0], forward[1], forward[2]),
        transpose_backward=(backward[0], backward[1], backward[2]),
        normalization=normalization,
        resample_data=_resampling(config, "resampling_fn_data", where),
        resample_probabilities=_resampling(
            config, "resampling_fn_probabilities", where
        ),
        labels=labels,
        num_heads=num_heads,
        architecture=architecture,
    )


def resolve_configuration(
    plans: dict[str, Any], name: str, *, source: str = "plans.json"
) -> dict[str, Any]:
    """One configuration with ``inherits_from`` applied, as nnU-Net does."""
    configurations = plans.get("configurations")
    if not isinstance(configurations, dict):
        raise ModelError(f"Expected a configurations object in {source}.")
    resolved: dict[str, Any] = {}
    chain: list[str] = []
    current: str | None = name
    while current is not None:
        if current in chain:
            raise ModelError(
                f"Expected acyclic inherits_from in {source}, but "
                f"{' -> '.join([*chain, current])} loops."
            )
        entry = configurations.get(current)
        if not isinstance(entry, dict):
            raise ModelError(
                f"Expected configuration {current!r} in {source}, but it has "
                f"only {sorted(configurations)}."
            )
        chain.append(current)
        resolved = {**entry, **resolved}
        parent = entry.get("inherits_from")
        current = str(parent) if parent is not None else None
    resolved.pop("inherits_from", None)
    return resolved


def parse_labels(dataset: dict[str, Any], source: str) -> tuple[dict[int, str], int]:
    """Foreground labels by value and the number of network outputs.

    nnU-Net's ``ignore`` label is not predicted, so it has no output.
    """
    raw = dataset.get("labels")
    if not isinstance(raw, dict) or not raw:
        raise ModelError(f"Expected a labels object in {source}, but it is missing.")
    if dataset.get("regions_class_order") is not None or any(
        isinstance(v, list | tuple) for v in raw.values()
    ):
        raise ModelError(
            f"Expected one value per label in {source}, but it defines regions; "
            "region-based models are not supported by the engine."
        )
    by_value: dict[int, str] = {}
    for name, value in raw.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ModelError(
                f"Expected label values to be non-negative integers in {source}, "
                f"but {name!r} is {value!r}."
            )
        if name != "ignore":
            by_value[value] = str(name)
    values = sorted(by_value)
    if values != list(range(len(values))):
        raise ModelError(
            f"Expected consecutive label values from 0 in {source}, but found {values}."
        )
    if values[-1] > 255:
        raise ModelError(
            f"Expected at most 255 foreground labels in {source} for uint8 masks, "
            f"but found {values[-1]}."
        )
    labels = {v: by_value[v] for v in values if v != 0}
    return labels, len(values)


def _normalization(
    plans: dict[str, Any],
    config: dict[str, Any],
    dataset: dict[str, Any],
    where: str,
    plans_source: str,
) -> tuple[ChannelNormalization, ...]:
    schemes = config.get("normalization_schemes")
    masks = config.get("use_mask_for_norm")
    if not isinstance(schemes, list) or not isinstance(masks, list):
        raise ModelError(
            f"Expected normalization_schemes and use_mask_for_norm lists in "
            f"{where}, but they are missing."
        )
    channels = dataset.get("channel_names", dataset.get("modality"))
    if isinstance(channels, dict) and len(channels) != len(schemes):
        raise ModelError(
            f"Expected one normalization scheme per channel in {where}, but "
            f"found {len(schemes)} schemes for {len(channels)} channels."
        )
    properties = plans.get(
        "foreground_intensity_properties_per_channel",
        plans.get("foreground_intensity_properties_by_modality", {}),
    )
    result = []
    for c, (scheme, use_mask) in enumerate(zip(schemes, masks, strict=False)):
        if scheme not in NORMALIZATION_SCHEMES:
            raise ModelError(
                f"Expected a normalization scheme from {list(NORMALIZATION_SCHEMES)} "
                f"in {where}, but channel {c} names {scheme!r}."
            )
        stats: dict[str, float] = {}
        if scheme == "CTNormalization":
            raw = properties.get(str(c)) if isinstance(properties, dict) else None
            if not isinstance(raw, dict):
                raw = {}  # missing: the KeyError below says so
            try:
                stats = {k: float(raw[k]) for k in _INTENSITY_KEYS}
            except (KeyError, TypeError, ValueError) as exc:
                raise ModelError(
                    f"Expected foreground_intensity_properties_per_channel['{c}'] "
                    f"with {list(_INTENSITY_KEYS)} in {plans_source} for "
                    f"CTNormalization, but it is missing or incomplete."
                ) from exc
        result.append(ChannelNormalization(str(scheme), bool(use_mask), stats))
    if len(result) != len(masks):
        raise ModelError(
            f"Expected use_mask_for_norm to have one entry per scheme in {where}."
        )
    return tuple(result)


def _resampling(config: dict[str, Any], key: str, where: str) -> Resampling:
    name = config.get(key)
    if name != _RESAMPLING_FN:
        raise ModelError(
            f"Expected {key} {_RESAMPLING_FN!r} in {where}, but found {name!r}, "
            "which the engine does not reproduce."
        )
    kwargs = config.get(f"{key}_kwargs") or {}
    force = kwargs.get("force_separate_z")
    try:
        return Resampling(
            order=int(kwargs.get("order", 3)),
            order_z=int(kwargs.get("order_z", 0)),
            force_separate_z=None if force is None else bool(force),
        )
    except (TypeError, ValueError) as exc:
        raise ModelError(
            f"Expected integer orders in {key}_kwargs of {where}."
        ) from exc


def _int_list(config: dict[str, Any], key: str, where: str) -> list[int]:
    value = config.get(key)
    if not isinstance(value, list) or not all(
        isinstance(v, int) and v > 0 for v in value
    ):
        raise ModelError(
            f"Expected {key} to be a list of positive integers in {where}, "
            f"but found {value!r}."
        )
    return value


def _float_list(config: dict[str, Any], key: str, where: str) -> list[float]:
    value = config.get(key)
    try:
        return [float(v) for v in value]  # type: ignore[union-attr]
    except (TypeError, ValueError) as exc:
        raise ModelError(
            f"Expected {key} to be a list of numbers in {where}, but found {value!r}."
        ) from exc


def _permutation(plans: dict[str, Any], key: str, source: str) -> list[int]:
    value = plans.get(key, [0, 1, 2])
    if not isinstance(value, list) or sorted(value) != [0, 1, 2]:
        raise ModelError(
            f"Expected {key} to be a permutation of [0, 1, 2] in {source}, but "
            f"found {value!r}."
        )
    return [int(v) for v in value]
