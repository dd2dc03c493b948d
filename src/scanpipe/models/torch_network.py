"""Torch-side loading of nnU-Net v2 model folders: checkpoints and networks.

Shared by the ONNX export and the ``nnunet:`` backend, and imported only by
them, so the default install never needs torch. Two safety rules apply:

* checkpoints are read with ``torch.load(weights_only=True)``, which refuses
  arbitrary pickled objects; a checkpoint that needs full unpickling loads
  only when the caller passes ``trust=True``;
* plans name their network and its building blocks as dotted paths; only
  paths inside ``torch`` and ``dynamic_network_architectures`` are imported.
"""

from __future__ import annotations

import inspect
import logging
import pickle
import pydoc
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scanpipe.errors import ModelError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: Packages whose classes plans may name; anything else is refused.
_ALLOWED_PREFIXES = ("torch.", "dynamic_network_architectures.")


@dataclass(frozen=True)
class Checkpoint:
    """What inference needs from one fold's checkpoint."""

    path: Path
    weights: dict[str, torch.Tensor]
    trainer_name: str
    configuration: str
    mirror_axes: tuple[int, ...] | None


def import_torch() -> Any:
    """Import torch, or explain which extra brings it."""
    try:
        import torch
    except ImportError as exc:
        raise ModelError(
            "Expected torch for this model backend or for export, but it is not "
            "installed; install the extra with `pip install 'scanpipe[nnunet]'`."
        ) from exc
    return torch


def find_folds(model_dir: Path, checkpoint: str) -> list[str]:
    """Folds that hold ``checkpoint``, in nnU-Net's order (``fold_all`` last)."""
    found = [
        p.name.removeprefix("fold_")
        for p in model_dir.glob("fold_*")
        if (p / checkpoint).is_file()
    ]
    numbered = sorted((f for f in found if f.isdigit()), key=int)
    folds = numbered or [f for f in found if f == "all"]
    if not folds:
        raise ModelError(
            f"Expected {model_dir}/fold_*/{checkpoint}, but no fold folder holds "
            "that checkpoint."
        )
    return folds


def load_checkpoint(path: Path, *, trust: bool = False) -> Checkpoint:
    """Read one fold's checkpoint without executing pickled code unless trusted.

    Raises:
        ModelError: the file is missing, unreadable, needs full unpickling
            without ``trust``, or lacks the keys nnU-Net writes.
    """
    torch = import_torch()
    if not path.is_file():
        raise ModelError(f"Expected a checkpoint at {path}, but the file is missing.")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust:
            raise ModelError(
                f"Expected {path} to hold only tensors and plain types, but it "
                "needs full unpickling, which can run arbitrary code; load it "
                "with trust=1 if you trust its source."
            ) from exc
        log.warning("checkpoint unpickled with trust path=%s", path)
        raw = _load_trusted(torch, path)
    except (OSError, RuntimeError, EOFError) as exc:
        raise ModelError(f"Expected a torch checkpoint at {path}, but: {exc}") from exc

    if not isinstance(raw, dict):
        raise ModelError(
            f"Expected {path} to hold nnU-Net's checkpoint dict, but found "
            f"{type(raw).__name__}."
        )
    missing = {"network_weights", "trainer_name", "init_args"} - raw.keys()
    if missing:
        raise ModelError(
            f"Expected {path} to hold nnU-Net's checkpoint keys, but "
            f"{sorted(missing)} are missing."
        )
    init_args = raw["init_args"]
    if not isinstance(init_args, dict) or "configuration" not in init_args:
        raise ModelError(
            f"Expected init_args.configuration in {path}, but it is missing."
        )
    axes = raw.get("inference_allowed_mirroring_axes")
    return Checkpoint(
        path=path,
        weights=raw["network_weights"],
        trainer_name=str(raw["trainer_name"]),
        configuration=str(init_args["configuration"]),
        mirror_axes=None if axes is None else tuple(int(a) for a in axes),
    )


def _load_trusted(torch: Any, path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # unpickling can raise anything the file holds
        raise ModelError(
            f"Expected a loadable checkpoint at {path}, but full unpickling "
            f"failed: {exc}"
        ) from exc


def build_plain_network(
    architecture: dict[str, Any],
    input_channels: int,
    output_channels: int,
    *,
    source: str = "plans.json",
) -> Any:
    """Build the network that plans describe, without nnU-Net's trainer lookup.

    This is what ``nnUNetTrainer.build_network_architecture`` does for the
    default trainers; a trainer that overrides it builds something else,
    which only nnU-Net itself can reproduce.

    Raises:
        ModelError: the plans name a class outside torch and
            dynamic_network_architectures, or the arguments do not fit it.
    """
    try:
        class_name = str(architecture["network_class_name"])
        kwargs = dict(architecture["arch_kwargs"])
        needs_import = list(architecture["_kw_requires_import"])
    except (KeyError, TypeError) as exc:
        raise ModelError(
            f"Expected {source} to describe the architecture with "
            "network_class_name, arch_kwargs and _kw_requires_import, but "
            f"{exc} is missing."
        ) from exc

    network_class = _locate(class_name, source)
    for key in needs_import:
        if kwargs.get(key) is not None:
            kwargs[key] = _locate(str(kwargs[key]), source)
    try:
        network = network_class(
            input_channels=input_channels,
            num_classes=output_channels,
            deep_supervision=False,
            **kwargs,
        )
    except (TypeError, ValueError, AssertionError) as exc:
        raise ModelError(
            f"Expected {source} to give valid arguments for {class_name}, "
            f"but building it failed: {exc}"
        ) from exc
    if hasattr(network, "initialize"):
        network.apply(network.initialize)
    return network


def _locate(dotted: str, source: str) -> Any:
    if not dotted.startswith(_ALLOWED_PREFIXES):
        raise ModelError(
            f"Expected {source} to name classes from torch or "
            f"dynamic_network_architectures, but it names {dotted!r}."
        )
    found = pydoc.locate(dotted)
    if found is None:
        raise ModelError(
            f"Expected {dotted!r} from {source} to be importable, but it is not "
            "(unknown architecture, or an older or newer "
            "dynamic_network_architectures)."
        )
    return found


def load_weights(network: Any, checkpoint: Checkpoint) -> None:
    """Load one fold's weights, translating a mismatch into ModelError."""
    try:
        network.load_state_dict(checkpoint.weights)
    except (RuntimeError, KeyError) as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise ModelError(
            f"Expected {checkpoint.path} to match the network its plans "
            f"describe, but loading the weights failed: {first_line}"
        ) from exc


def set_threads(threads: int | None) -> None:
    """Cap torch's intra-op threads; inter-op threads stay as torch chose."""
    if threads:
        import_torch().set_num_threads(threads)


def network_for(
    plans: dict[str, Any],
    configuration_name: str,
    input_channels: int,
    output_channels: int,
    trainer_name: str,
) -> Any:
    """The network nnU-Net would build for this trainer, or the plain one.

    nnU-Net asks the trainer class; finding it imports every trainer module,
    which fails on machines where an optional dependency (torchvision) is
    broken. Plain architectures are then built from the plans directly.
    """
    # nnU-Net imports whatever the plans name; refuse other packages first.
    architecture = resolve_configuration(plans, configuration_name).get("architecture")
    architecture = check_architecture_names(architecture)
    try:
        from nnunetv2.utilities.find_objects import (
            recursive_find_trainer_class_by_name,
        )
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        trainer = recursive_find_trainer_class_by_name(trainer_name)
        plans_manager = PlansManager(plans)
        configuration = plans_manager.get_configuration(configuration_name)
    except Exception as exc:  # the lookup imports arbitrary trainer modules
        log.info(
            "trainer class not importable, building plain network trainer=%s error=%s",
            trainer_name,
            type(exc).__name__,
        )
        return build_plain_network(architecture, input_channels, output_channels)

    build = trainer.build_network_architecture
    try:
        if "plans_manager" in inspect.signature(build).parameters:
            return build(
                plans_manager,
                configuration,
                input_channels,
                output_channels,
                enable_deep_supervision=False,
            )
        # Trainers written for nnU-Net before 2.6 take the architecture fields.
        return build(
            configuration.network_arch_class_name,
            configuration.network_arch_init_kwargs,
            configuration.network_arch_init_kwargs_req_import,
            input_channels,
            output_channels,
            enable_deep_supervision=False,
        )
    except (TypeError, ValueError, AssertionError, ImportError) as exc:
        raise ModelError(
            f"Expected plans.json to give valid arguments for the network of "
            f"{trainer_name}, but building it failed: {exc}"
        ) from exc


def check_architecture_names(
    architecture: Any, source: str = "plans.json"
) -> dict[str, Any]:
    """Refuse plans that name classes outside torch and the network library."""
    if not isinstance(architecture, dict):
        raise ModelError(f"Expected an architecture entry in {source}.")
    names = [architecture.get("network_class_name")]
    kwargs = architecture.get("arch_kwargs") or {}
    names += [kwargs.get(k) for k in architecture.get("_kw_requires_import") or []]
    for name in names:
        if name is not None and not str(name).startswith(_ALLOWED_PREFIXES):
            raise ModelError(
                f"Expected {source} to name classes from torch or "
                f"dynamic_network_architectures, but it names {name!r}."
            )
    return architecture


def resolve_configuration(plans: dict[str, Any], name: str) -> dict[str, Any]:
    """One configuration of the plans with ``inherits_from`` applied."""
    from scanpipe.models.engine.plans import resolve_configuration as resolve

    return resolve(plans, name, source="plans.json")
