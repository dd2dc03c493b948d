"""The manifest of an exported model folder: what was exported, and from what.

An export folder holds ``network.onnx`` (all folds in one graph, their logits
averaged), copies of ``plans.json`` and ``dataset.json``, and
``manifest.json``::

    {"format": "scanpipe-onnx", "version": 1, "network": "network.onnx",
     "sha256": "...", "configuration": "3d_fullres", "folds": ["0"],
     "checkpoint": "checkpoint_final.pth", "trainer_name": "nnUNetTrainer",
     "mirror_axes": [0, 1, 2], "exported_with": {"torch": "...", ...}}

The checksum pins the graph to the manifest: a replaced or damaged network
file is refused at load instead of giving silently different masks.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from scanpipe.errors import ModelError
from scanpipe.models.engine.plans import read_json

FORMAT = "scanpipe-onnx"
VERSION = 1
MANIFEST = "manifest.json"
NETWORK = "network.onnx"


@dataclass(frozen=True)
class Manifest:
    """The contents of ``manifest.json``."""

    sha256: str
    configuration: str
    folds: list[str]
    checkpoint: str
    trainer_name: str
    #: Axes (network order) nnU-Net allows mirroring over; None: no mirroring.
    mirror_axes: list[int] | None
    network: str = NETWORK
    exported_with: dict[str, str] = field(default_factory=dict)
    format: str = FORMAT
    version: int = VERSION

    def write(self, folder: Path) -> Path:
        path = folder / MANIFEST
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path


def read_manifest(folder: Path) -> Manifest:
    """Read and check ``manifest.json`` of an export folder.

    Raises:
        ModelError: the file is missing, malformed, of another format or
            version, or names a network file that is missing.
    """
    path = folder / MANIFEST
    if not path.is_file() and (folder / "plans.json").is_file():
        raise ModelError(
            f"Expected {path}, but it is missing and the folder looks like an "
            "nnU-Net model folder; convert it with `scanpipe export MODEL_DIR "
            "OUT_DIR` or run it with the nnunet: backend."
        )
    raw: dict[str, Any] = read_json(path)
    if raw.get("format") != FORMAT or raw.get("version") != VERSION:
        raise ModelError(
            f"Expected format {FORMAT!r} version {VERSION} in {path}, but found "
            f"{raw.get('format')!r} version {raw.get('version')!r}."
        )
    try:
        manifest = Manifest(
            sha256=str(raw["sha256"]),
            configuration=str(raw["configuration"]),
            folds=[str(f) for f in raw["folds"]],
            checkpoint=str(raw["checkpoint"]),
            trainer_name=str(raw["trainer_name"]),
            mirror_axes=(
                None
                if raw.get("mirror_axes") is None
                else [int(a) for a in raw["mirror_axes"]]
            ),
            network=str(raw.get("network", NETWORK)),
            exported_with={
                str(k): str(v) for k, v in raw.get("exported_with", {}).items()
            },
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(
            f"Expected {path} to hold sha256, configuration, folds, checkpoint, "
            f"trainer_name and mirror_axes, but {exc} is missing or malformed."
        ) from exc
    if Path(manifest.network).name != manifest.network:
        raise ModelError(
            f"Expected a file name for network in {path}, but found "
            f"{manifest.network!r}."
        )
    if manifest.mirror_axes is not None and not set(manifest.mirror_axes) <= {0, 1, 2}:
        raise ModelError(
            f"Expected mirror_axes within [0, 1, 2] in {path}, but found "
            f"{manifest.mirror_axes}."
        )
    return manifest


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks (networks can be large)."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
    except FileNotFoundError as exc:
        raise ModelError(f"Expected {path}, but the file is missing.") from exc
    return digest.hexdigest()
